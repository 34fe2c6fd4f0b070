"""The torch ops on the GPU: every extension against a float64 reference written from
the definition; same bits on repeat, under torch.compile(fullgraph=True) and in a
replayed CUDA graph (with inputs, lengths and block tables changed in place between
replays); the workspace from torch's allocator; torch's current stream; refusals.
Outputs are poisoned with NaN where the op writes into given buffers."""
from __future__ import annotations

import math
import zlib

import pytest

from conftest import gpu

torch = pytest.importorskip("torch", reason="PyTorch is not importable")

import flashdecoding as fd  # noqa: E402
from flashdecoding.integrations import torch as fdt  # noqa: E402
from flashdecoding.integrations._torch_launch import Extensions, describe, plan_for  # noqa: E402
from test_torch_op import reference_decode  # noqa: E402

pytestmark = [gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                      reason="PyTorch sees no CUDA device")]

OPS = torch.ops.flashdecoding
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}  # max |y - ref| / max |ref|, as everywhere
LSE_TOL = 1e-3  # absolute, natural log


def rel_err(y, ref):
    y, ref = y.double(), ref.double()
    if not torch.all(torch.isfinite(y)):
        return math.inf
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def bits_equal(a, b):
    view = torch.int16 if a.element_size() == 2 else torch.int32
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


def randn(*shape, dtype=torch.bfloat16, gen=None, scale=1.0):
    return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(dtype)


def _problem(b, hq, hkv, k_len, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = randn(b, hq, d, dtype=dtype, gen=g)
    # k in [B, K, H_kv, D] memory seen as [B, H_kv, K, D]: strided, as engines keep it
    k = randn(b, k_len, hkv, d, dtype=dtype, gen=g).transpose(1, 2)
    v = randn(b, hkv, k_len, d, dtype=dtype, gen=g)
    return q, k, v, g


SHAPES = {
    "gqa": (3, 8, 2, 300, 128),
    "mha_d64": (2, 4, 4, 77, 64),
    "mqa_d256": (2, 16, 1, 1000, 256),
    "long_split": (1, 32, 8, 20000, 128),
}


def _extensions(name, b, hq, k_len, g):
    lens = torch.randint(0, k_len + 1, (b,), device="cuda", dtype=torch.int32, generator=g)
    lens[0] = k_len
    slopes = torch.rand(hq, device="cuda", generator=g) * 0.1
    sinks = torch.randn(hq, device="cuda", generator=g)
    return {
        "plain": {},
        "scale": {"scale": 0.37},
        "lengths": {"seq_lens": lens},
        "window_sink_tokens": {"seq_lens": lens, "window": 64, "sink_tokens": 4},
        "sink_logits_alibi_soft_cap": {"sink_logits": sinks, "alibi_slopes": slopes,
                                       "soft_cap": 5.0},
        "batch_invariant": {"seq_lens": lens, "batch_invariant": True},
    }[name]


EXTENSIONS = ["plain", "scale", "lengths", "window_sink_tokens", "sink_logits_alibi_soft_cap",
              "batch_invariant"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("ext", EXTENSIONS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_decode_matches_the_reference(shape, ext, dtype):
    b, hq, hkv, k_len, d = SHAPES[shape]
    q, k, v, g = _problem(b, hq, hkv, k_len, d, dtype, seed=zlib.crc32(f"{shape}/{ext}".encode()))
    kw = _extensions(ext, b, hq, k_len, g)
    y, lse = OPS.decode_lse(q, k, v, **kw)
    ref_y, ref_lse = reference_decode(q, k, v, **kw)
    assert y.dtype == dtype and tuple(y.shape) == (b, hq, d) and lse.dtype == torch.float32
    assert rel_err(y, ref_y) <= TOL[dtype]
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    diff = (lse.double() - ref_lse).abs()[finite]
    assert diff.numel() == 0 or float(diff.max()) <= LSE_TOL
    # the same call again, and without the LSE: the same bits
    assert bits_equal(OPS.decode(q, k, v, **kw), y)
    assert bits_equal(OPS.decode_lse(q, k, v, **kw)[1], lse)


@pytest.mark.parametrize("kv_layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16, 256])
def test_paged_pools_match_the_reference(kv_layout, page_size):
    b, hq, hkv, d, max_len = 4, 16, 4, 128, 700
    g = torch.Generator(device="cuda").manual_seed(page_size)
    max_pages = -(-max_len // page_size)
    num_pages = b * max_pages + 3
    shape = ((num_pages, page_size, hkv, d) if kv_layout == "NHD"
             else (num_pages, hkv, page_size, d))
    k, v = randn(*shape, gen=g), randn(*shape, gen=g)
    q = randn(b, hq, d, gen=g)
    table = torch.randperm(num_pages, device="cuda", generator=g)[:b * max_pages]
    table = table.to(torch.int32).reshape(b, max_pages)
    lens = torch.tensor([max_len, 1, 0, 333], device="cuda", dtype=torch.int32)
    kw = dict(block_table=table, kv_layout=kv_layout, seq_lens=lens, max_seq_len=max_len)
    y, lse = OPS.decode_lse(q, k, v, **kw)
    ref_y, ref_lse = reference_decode(q, k, v, **kw)
    assert rel_err(y, ref_y) <= TOL[torch.bfloat16]
    assert float(lse[2].max()) == -math.inf and torch.all(y[2] == 0)  # an empty sequence
    finite = torch.isfinite(ref_lse)
    assert float((lse.double()[finite] - ref_lse[finite]).abs().max()) <= LSE_TOL


def _fp8_or_skip():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 KV needs compute capability 8.9 or newer")


@pytest.mark.parametrize("per_head", [False, True], ids=["per_tensor", "per_head"])
@pytest.mark.parametrize("fp8", ["float8_e4m3fn", "float8_e5m2"])
def test_fp8_caches_match_the_reference_of_the_dequantised_cache(fp8, per_head):
    _fp8_or_skip()
    b, hq, hkv, k_len, d = 2, 16, 4, 1000, 128
    g = torch.Generator(device="cuda").manual_seed(5)
    q = randn(b, hq, d, gen=g)
    k = randn(b, hkv, k_len, d, dtype=torch.float32, gen=g).to(getattr(torch, fp8))
    v = randn(b, hkv, k_len, d, dtype=torch.float32, gen=g).to(getattr(torch, fp8))
    if per_head:
        ks = torch.rand(hkv, device="cuda", generator=g) + 0.5
        vs = torch.rand(hkv, device="cuda", generator=g) + 0.5
        y = fdt.decode(q, k, v, k_scale=ks, v_scale=vs)
        ref, _ = reference_decode(q, k, v, k_scales=ks, v_scales=vs)
    else:
        y = fdt.decode(q, k, v, k_scale=0.75, v_scale=1.5)
        ref, _ = reference_decode(q, k, v, k_scale=0.75, v_scale=1.5)
    assert rel_err(y, ref) <= TOL[torch.bfloat16]


def test_out_and_lse_buffers_are_written_in_place():
    q, k, v, _ = _problem(3, 8, 2, 500, 128, torch.float16, seed=11)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((3, 8), float("nan"), device="cuda")
    got = fdt.decode(q, k, v, out=out, lse=lse)
    assert got[0] is out and got[1] is lse
    y, l2 = OPS.decode_lse(q, k, v)
    assert bits_equal(out, y) and bits_equal(lse, l2)
    # a view of a bigger buffer as the output (strided rows)
    big = torch.full((3, 8, 256), float("nan"), device="cuda", dtype=torch.float16)
    OPS.decode_out(q, k, v, big[:, :, :128])
    assert bits_equal(big[:, :, :128], y) and torch.all(torch.isnan(big[:, :, 128:]))


# ---------------------------------------------------------------------- compile and graphs

def _step(q, k, v, lens):
    y, lse = torch.ops.flashdecoding.decode_lse(q, k, v, seq_lens=lens, window=256,
                                                sink_tokens=4, soft_cap=30.0)
    return y, lse


@pytest.mark.parametrize("mode", [None, "reduce-overhead"], ids=["default", "cudagraphs"])
def test_compile_fullgraph_gives_the_bits_of_eager(mode):
    torch._dynamo.reset()
    q, k, v, g = _problem(4, 32, 8, 3000, 128, torch.bfloat16, seed=3)
    lens = torch.tensor([3000, 17, 2048, 999], device="cuda", dtype=torch.int32)
    eager = _step(q, k, v, lens)
    compiled = torch.compile(_step, fullgraph=True, mode=mode)
    for _ in range(3):  # cudagraph trees record on the first calls, replay after
        got = compiled(q, k, v, lens)
    for a, b in zip(got, eager):
        assert bits_equal(a, b)
    # new values in the same buffers: still eager's bits
    q.copy_(randn(*q.shape, gen=g))
    lens.copy_(torch.tensor([5, 3000, 1, 0], device="cuda", dtype=torch.int32))
    got, eager = compiled(q, k, v, lens), _step(q, k, v, lens)
    for a, b in zip(got, eager):
        assert bits_equal(a, b)


def test_compile_fullgraph_of_the_out_variant_and_the_front():
    torch._dynamo.reset()
    q, k, v, _ = _problem(2, 16, 4, 1500, 64, torch.float16, seed=4)

    def f(q, k, v, out):
        fdt.decode(q, k, v, out=out, window=100)
        y, lse = fdt.decode(q, k, v, return_lse=True)
        return out * 1, y, lse

    out_e, out_c = torch.empty_like(q), torch.empty_like(q)
    eager = f(q, k, v, out_e)
    got = torch.compile(f, fullgraph=True)(q, k, v, out_c)
    for a, b in zip(got, eager):
        assert bits_equal(a, b)
    assert bits_equal(out_c, out_e)


def _warm(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)


def test_cuda_graph_replay_gives_the_bits_of_eager_as_inputs_change():
    q, k, v, g = _problem(4, 32, 8, 4096, 128, torch.bfloat16, seed=6)
    lens = torch.tensor([4096, 100, 2000, 1], device="cuda", dtype=torch.int32)
    _warm(lambda: _step(q, k, v, lens))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # any synchronising or allocating CUDA call fails here
        y, lse = _step(q, k, v, lens)
    y.fill_(float("nan"))
    graph.replay()
    want = _step(q, k, v, lens)
    assert bits_equal(y, want[0]) and bits_equal(lse, want[1])
    for step in range(3):  # decode-loop style: new query, one more key, longer lengths
        q.copy_(randn(*q.shape, gen=g))
        pos = 2000 + step
        k[:, :, pos].copy_(randn(4, 8, 128, gen=g))
        lens.copy_(torch.clamp(lens + 1, max=4096))
        graph.replay()
        want = _step(q, k, v, lens)
        assert bits_equal(y, want[0]) and bits_equal(lse, want[1])


def test_cuda_graph_of_a_paged_decode_follows_the_block_table():
    b, hq, hkv, d, page, pages = 3, 16, 4, 128, 16, 64
    g = torch.Generator(device="cuda").manual_seed(8)
    k, v = randn(pages, page, hkv, d, gen=g), randn(pages, page, hkv, d, gen=g)
    q = randn(b, hq, d, gen=g)
    table = torch.zeros(b, 8, device="cuda", dtype=torch.int32)
    lens = torch.zeros(b, device="cuda", dtype=torch.int32)

    def call():
        return OPS.decode(q, k, v, block_table=table, seq_lens=lens)

    _warm(call)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = call()
    for n in (1, 17, 100, 128):  # lengths grow, pages are appended on the device
        need = -(-n // page)
        table.copy_(torch.randperm(pages, device="cuda", generator=g)[:b * 8]
                    .to(torch.int32).reshape(b, 8))
        lens.fill_(n)
        graph.replay()
        want = call()
        assert bits_equal(y, want)
        ref, _ = reference_decode(q, k, v, block_table=table, seq_lens=lens)
        assert rel_err(y, ref) <= TOL[torch.bfloat16], (n, need)


# ---------------------------------------------------------------------- memory and streams

def test_workspace_and_outputs_come_from_torch_s_allocator(monkeypatch):
    from flashdecoding import cuda as fd_cuda

    q, k, v, _ = _problem(1, 32, 8, 65536, 128, torch.bfloat16, seed=9)
    plan = plan_for(*describe(q, k, v, Extensions()))
    assert plan.workspace_size() > 0  # the case needs a workspace

    def no_device_buffer(*args, **kwargs):
        raise AssertionError("the op allocated a DeviceBuffer (cudaMallocAsync)")

    monkeypatch.setattr(fd_cuda.DeviceBuffer, "__init__", no_device_buffer)
    OPS.decode(q, k, v)  # warm: plan cached
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    y = OPS.decode(q, k, v)
    middle = torch.cuda.memory_stats()["allocation.all.allocated"]
    y2, lse = OPS.decode_lse(q, k, v)
    after = torch.cuda.memory_stats()["allocation.all.allocated"]
    assert middle - before == 2  # y and the workspace
    assert after - middle == 3  # y, lse and the workspace
    assert bits_equal(y, y2)


def test_launches_on_torch_s_current_stream_without_synchronising():
    q, k, v, _ = _problem(2, 32, 8, 8192, 128, torch.bfloat16, seed=10)
    want = OPS.decode(q, k, v)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    torch.cuda.set_sync_debug_mode("error")  # a synchronising torch call raises
    try:
        with torch.cuda.stream(side):
            torch.cuda._sleep(100_000_000)  # the side stream is busy for a while
            q2 = q * 1  # written on the side stream after the wait
            y = OPS.decode(q2, k, v)  # must run after it, on the side stream
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert bits_equal(y, want)


# ---------------------------------------------------------------------- refusals

def test_refusals_name_the_argument_and_write_nothing():
    q, k, v, _ = _problem(2, 8, 2, 100, 128, torch.bfloat16, seed=12)
    out = torch.full_like(q, float("nan"))
    cases = [
        (dict(window=0), fd.InvalidProblem, "window = 0"),
        (dict(seq_lens=torch.zeros(2, device="cuda", dtype=torch.int64)), fd.InvalidProblem,
         "seq_lens: expected int32"),
        (dict(sink_logits=torch.zeros(7, device="cuda")), fd.InvalidProblem, "sink_logits"),
        (dict(soft_cap=-1.0), fd.InvalidProblem, "soft_cap"),
        (dict(seq_lens=torch.zeros(2, dtype=torch.int32)), fd.InvalidPointer,
         "seq_lens is on cpu but q is on cuda"),
    ]
    for kw, exc, words in cases:
        with pytest.raises(exc) as info:
            OPS.decode_out(q, k, v, out, **kw)
        assert words in str(info.value), kw
        assert torch.all(torch.isnan(out)), kw
    wide_q = randn(2, 8, 257)
    with pytest.raises(fd.Unsupported, match="257"):
        OPS.decode(wide_q, randn(2, 2, 10, 257), randn(2, 2, 10, 257))
