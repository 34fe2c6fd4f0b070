"""GPU tests of every extension argument on contiguous caches against the
independent float64 reference: LSE, per-sequence lengths, sliding window with
StreamingLLM sink tokens, sink logits, ALiBi, soft-cap, batch invariance, through
flash_decode (DeviceBuffers and PyTorch) and the plan API. Outputs are
NaN-poisoned before every run, repeats are bit-identical, a refused call leaves
every buffer as it was. Skipped without a GPU."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import flashdecoding as fd
from flashdecoding import reference
from flashdecoding.cuda import DeviceBuffer
from device_arrays import TOL, host, nan_buf, bits, f32
from conftest import gpu

pytestmark = gpu

F16, BF16 = fd.ElementKind.F16, fd.ElementKind.BF16
B, HQ, HKV, D = 5, 16, 4, 128


def decode_twice(q, k, v, element, **kw):
    """flash_decode on device copies, NaN-poisoned y and lse, twice: (y, lse), and the
    two runs' bits must agree."""
    dq, dk, dv = (DeviceBuffer.from_numpy(a) for a in (q, k, v))
    dev = {}
    for name, value in kw.items():
        if name == "seq_lens" and value is not None:
            dev[name] = DeviceBuffer.from_numpy(np.asarray(value, np.int32))
        elif name in ("sink_logits", "alibi_slopes") and value is not None:
            dev[name] = DeviceBuffer.from_numpy(np.asarray(value, np.float32))
        else:
            dev[name] = value
    runs = []
    for _ in range(2):
        y, lse = nan_buf(q.shape, element), nan_buf(q.shape[:2])
        out, out_lse = fd.flash_decode(dq, dk, dv, out=y, lse=lse, return_lse=True, **dev)
        assert out is y and out_lse is lse
        runs.append((y.to_numpy(), lse.to_numpy()))
    assert np.array_equal(bits(runs[0][0]), bits(runs[1][0])), "a repeat gave other bits"
    assert np.array_equal(bits(runs[0][1]), bits(runs[1][1]))
    return runs[0]


def reference_of(q, k, v, **kw):
    kw = {n: (f32(x) if n in ("sink_logits", "alibi_slopes") and x is not None else x)
          for n, x in kw.items() if n != "batch_invariant"}
    return reference.decode(q, k, v, return_lse=True, **kw)


def check(y, lse, ref_y, ref_lse, element):
    assert reference.relative_error(y, ref_y) <= TOL[element]
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=2e-3)


LENS = [1000, 0, 1, 257, 64]          # K = 1000: several splits for the long one
CASES = {
    "lse_only": dict(),
    "seq_lens": dict(seq_lens=LENS),
    "seq_lens_clamped": dict(seq_lens=[5000, -7, 3, 1000, 999]),
    "window": dict(window=100, seq_lens=LENS),
    "window_1": dict(window=1),
    "window_sink_tokens": dict(window=100, sink_tokens=4, seq_lens=LENS),
    "window_sink_tokens_overlap": dict(window=60, sink_tokens=8, seq_lens=[64, 68, 70, 500, 9]),
    "sink_tokens_without_window": dict(sink_tokens=4, seq_lens=LENS),
    "sink_logits": dict(sink_logits=np.linspace(-2.0, 3.0, HQ), seq_lens=LENS),
    "alibi": dict(alibi_slopes=2.0 ** -np.arange(1, HQ + 1) * 4, seq_lens=LENS),
    "soft_cap": dict(soft_cap=1.5),
    "batch_invariant": dict(batch_invariant=True, seq_lens=LENS),
    "everything": dict(seq_lens=LENS, window=300, sink_tokens=4,
                       sink_logits=np.linspace(1.0, -1.0, HQ),
                       alibi_slopes=2.0 ** -np.arange(1, HQ + 1), soft_cap=8.0,
                       batch_invariant=True, scale=0.1),
}


@pytest.mark.parametrize("element", [F16, BF16], ids=lambda e: e.short_name)
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_extension_matches_the_reference(name, element):
    rng = np.random.default_rng(zlib.crc32(f"{name}/{element.name}".encode()))
    k_len = 1000
    q = host((B, HQ, D), element, rng)
    k, v = host((B, HKV, k_len, D), element, rng), host((B, HKV, k_len, D), element, rng)
    kw = dict(CASES[name])
    y, lse = decode_twice(q, k, v, element, **kw)
    kw.setdefault("scale", D ** -0.5)
    ref_y, ref_lse = reference_of(q, k, v, **kw)
    check(y, lse, ref_y, ref_lse, element)


def test_a_subnormal_soft_cap_on_a_zero_query_row_matches_the_reference():
    # 1 / cap overflows float32 there; head 0's scores are all exactly 0.
    element = BF16
    rng = np.random.default_rng(3)
    q = host((B, HQ, D), element, rng)
    q[:, 0] = 0
    k, v = host((B, HKV, 300, D), element, rng), host((B, HKV, 300, D), element, rng)
    y, lse = decode_twice(q, k, v, element, soft_cap=1e-39)
    assert np.isfinite(y.astype(np.float32)).all() and np.isfinite(lse).all()
    ref_y, ref_lse = reference_of(q, k, v, soft_cap=1e-39, scale=D ** -0.5)
    check(y, lse, ref_y, ref_lse, element)


def test_sink_tokens_change_the_result_only_under_a_window():
    element = F16
    rng = np.random.default_rng(1)
    q = host((2, HQ, D), element, rng)
    k, v = host((2, HKV, 600, D), element, rng), host((2, HKV, 600, D), element, rng)
    # make the first keys matter: they align with q
    for h in range(HKV):
        k[:, h, :4] = q[:, h * (HQ // HKV):h * (HQ // HKV) + 1].astype(np.float32) * 3
    full, _ = decode_twice(q, k, v, element)
    with_sinks, _ = decode_twice(q, k, v, element, sink_tokens=4)
    assert np.array_equal(bits(full), bits(with_sinks))  # no window: every key attended anyway
    windowed, _ = decode_twice(q, k, v, element, window=64)
    streaming, _ = decode_twice(q, k, v, element, window=64, sink_tokens=4)
    assert reference.relative_error(streaming, windowed) > 10 * TOL[element]
    ref_y, _ = reference_of(q, k, v, window=64, sink_tokens=4)
    assert reference.relative_error(streaming, ref_y) <= TOL[element]


def test_batch_invariant_bits_with_every_extension():
    element = BF16
    rng = np.random.default_rng(2)
    q = host((B, HQ, D), element, rng)
    k, v = host((B, HKV, 1000, D), element, rng), host((B, HKV, 1000, D), element, rng)
    kw = dict(window=300, sink_tokens=4, sink_logits=np.linspace(1, -1, HQ),
              alibi_slopes=2.0 ** -np.arange(1, HQ + 1), soft_cap=8.0, batch_invariant=True)
    y_all, lse_all = decode_twice(q, k, v, element, seq_lens=LENS, **kw)
    y_one, lse_one = decode_twice(q[3:4], k[3:4, :, :300], v[3:4, :, :300], element,
                                  seq_lens=LENS[3:4], **kw)
    assert np.array_equal(bits(y_all[3:4]), bits(y_one))
    assert np.array_equal(bits(lse_all[3:4]), bits(lse_one))


def test_plan_api_with_extension_args():
    element = F16
    rng = np.random.default_rng(3)
    desc = fd.FlashDecodingDescriptor.new_gqa(B, HQ, HKV, 700, D, element)
    desc = desc.with_window(128, sink_tokens=2).with_soft_cap(20.0)
    plan = fd.FlashDecodingPlan.select(None, desc)
    q, k, v = (host(s, element, rng) for s in (desc.q_shape(), desc.kv_shape(), desc.kv_shape()))
    lens = np.array([700, 3, 0, 129, 500], np.int32)
    slopes = (2.0 ** -np.arange(1, HQ + 1)).astype(np.float32)
    bufs = [DeviceBuffer.from_numpy(a) for a in (q, k, v, lens, slopes)]
    y, lse = nan_buf(desc.y_shape(), element), nan_buf(desc.lse_shape())
    args = fd.FlashDecodingArgs(bufs[0], bufs[1], bufs[2], y, lse=lse, seq_lens=bufs[3],
                                alibi_slopes=bufs[4])
    assert plan.can_implement(args) is None
    ws = DeviceBuffer(plan.workspace_size())
    plan.run(None, fd.Workspace.borrowed(ws), args)
    ref_y, ref_lse = reference.decode(q, k, v, desc.scale, seq_lens=lens, window=128,
                                      sink_tokens=2, soft_cap=20.0, alibi_slopes=f32(slopes),
                                      return_lse=True)
    check(y.to_numpy(), lse.to_numpy(), ref_y, ref_lse, element)
    key = plan.dispatch_key(args)
    assert key.varlen and key.alibi and key.sliding_window == 128 and key.sink == 2
    lp = plan.launch_plan(args)
    assert lp["cell_index"] == plan.sku().index and lp["ctas"] >= 1
    assert lp["warps_per_cta"] in (4, 8) and lp["vectorized"] in (0, 1)


def test_a_refused_call_writes_nothing():
    element = F16
    rng = np.random.default_rng(4)
    q = host((B, HQ, D), element, rng)
    k, v = host((B, HKV, 300, D), element, rng), host((B, HKV, 300, D), element, rng)
    dq, dk, dv = (DeviceBuffer.from_numpy(a) for a in (q, k, v))
    y, lse = nan_buf(q.shape, element), nan_buf(q.shape[:2])
    bad_lens = DeviceBuffer.from_numpy(np.zeros(B, np.float32))
    before = [bits(b.to_numpy()) for b in (y, lse, dq, dk, dv)]
    with pytest.raises(fd.InvalidProblem, match="seq_lens: expected int32"):
        fd.flash_decode(dq, dk, dv, out=y, lse=lse, seq_lens=bad_lens)
    with pytest.raises(fd.InvalidProblem, match="window = 0"):
        fd.flash_decode(dq, dk, dv, out=y, lse=lse, window=0)
    overlap = y.view((B, HQ), (HQ * D // 2, D // 2), dtype="float32")  # lse inside y
    with pytest.raises(fd.InvalidPointer, match="overlaps"):
        fd.flash_decode(dq, dk, dv, out=y, lse=overlap)
    after = [bits(b.to_numpy()) for b in (y, lse, dq, dk, dv)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_torch_with_extensions_and_workspace_from_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not importable")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    element = BF16
    rng = np.random.default_rng(5)
    k_len = 20000  # split: a workspace is needed and comes from torch's allocator
    q = host((2, HQ, D), element, rng)
    k, v = host((2, HKV, k_len, D), element, rng), host((2, HKV, k_len, D), element, rng)
    t = [torch.from_numpy(a.astype(np.float32)).to("cuda", torch.bfloat16) for a in (q, k, v)]
    lens = torch.tensor([k_len, 777], dtype=torch.int32, device="cuda")
    sinks = torch.linspace(-1, 1, HQ, device="cuda", dtype=torch.float32)
    allocated = torch.cuda.memory_allocated()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y, lse = fd.flash_decode(*t, seq_lens=lens, window=5000, sink_tokens=4,
                                 sink_logits=sinks, return_lse=True)
        y2 = fd.flash_decode(*t, seq_lens=lens, window=5000, sink_tokens=4, sink_logits=sinks)
    s.synchronize()
    assert torch.equal(y.view(torch.int16), y2.view(torch.int16))
    assert torch.cuda.memory_allocated() - allocated < 1 << 20  # the workspace went back
    ref_y, ref_lse = reference_of(q, k, v, scale=D ** -0.5, seq_lens=[k_len, 777], window=5000,
                                  sink_tokens=4, sink_logits=sinks.cpu().numpy())
    check(y.float().cpu().numpy(), lse.cpu().numpy(), ref_y, ref_lse, element)
