"""The PyTorch and transformers integrations without a GPU: `import flashdecoding`
needs no torch; the torch ops' registration, schemas and fake (meta)
implementations, traced by torch.compile(fullgraph=True); the transformers
backend's registration, its refusal without transformers, and its decode glue
(mask -> lengths and block table over the cache) checked on CPU against SDPA and
eager attention with a float64 reference standing in for the CUDA kernel."""
from __future__ import annotations

import copy
import math
import textwrap

import pytest

import flashdecoding as fd
from conftest import run_python

try:
    import torch
except ImportError:  # the import-without-torch tests run all the same
    torch = None
else:
    from flashdecoding.integrations import _mask_keys
    from flashdecoding.integrations import torch as fdt
    from flashdecoding.integrations._torch_launch import Extensions, describe, plan_for

    OPS = torch.ops.flashdecoding

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not importable")


# ---------------------------------------------------------------------- a float64 reference

def _kv_rows(cache, b, length, block_table, kv_layout, page_size):
    """[H_kv, length, D] float64: the first `length` keys of sequence b."""
    if block_table is None:
        return cache[b, :, :length].double()
    j = torch.arange(length)
    pages = block_table[b].long().cpu()[j // page_size].to(cache.device)
    slots = (j % page_size).to(cache.device)
    rows = cache[pages, slots] if kv_layout == "NHD" else cache[pages, :, slots]
    return rows.transpose(0, 1).double()  # [L, H_kv, D] -> [H_kv, L, D]


def reference_decode(q, k, v, scale=None, seq_lens=None, window=None, sink_tokens=0,
                     sink_logits=None, alibi_slopes=None, soft_cap=None, block_table=None,
                     kv_layout="NHD", max_seq_len=None, k_scale=None, v_scale=None,
                     k_scales=None, v_scales=None, batch_invariant=False):
    """(y, lse) in float64 on q's device, straight from the definition: logits
    x_j = scale q.k_j, soft-capped, plus ALiBi slope * (j - (L - 1)); softmax over the
    last `window` keys and the first `sink_tokens` (all keys without a window), with
    exp(sink_logits[h]) in the denominator; lse the natural log of that denominator
    (-inf when empty). fp8 caches are dequantised as k * scale."""
    bsz, hq, d = q.shape
    paged = block_table is not None
    if paged:
        page_size = k.shape[1] if kv_layout == "NHD" else k.shape[2]
        hkv = k.shape[2] if kv_layout == "NHD" else k.shape[1]
        k_len = block_table.shape[1] * page_size if max_seq_len is None else max_seq_len
    else:
        page_size, hkv, k_len = 0, k.shape[1], k.shape[2]
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    y = torch.zeros(bsz, hq, d, dtype=torch.float64, device=q.device)
    lse = torch.full((bsz, hq), -math.inf, dtype=torch.float64, device=q.device)
    for b in range(bsz):
        length = k_len if seq_lens is None else int(seq_lens[b])
        length = min(max(length, 0), k_len)
        keys = _kv_rows(k, b, length, block_table, kv_layout, page_size)
        vals = _kv_rows(v, b, length, block_table, kv_layout, page_size)
        ks = torch.ones(hkv, dtype=torch.float64, device=q.device) * (k_scale or 1.0)
        vs = torch.ones(hkv, dtype=torch.float64, device=q.device) * (v_scale or 1.0)
        if k_scales is not None:
            ks = k_scales.double()
        if v_scales is not None:
            vs = v_scales.double()
        keys, vals = keys * ks[:, None, None], vals * vs[:, None, None]
        j = torch.arange(length, device=q.device, dtype=torch.float64)
        attended = torch.ones(length, dtype=torch.bool, device=q.device)
        if window:
            attended = (j >= length - window) | (j < sink_tokens)
        for h in range(hq):
            x = scale * (keys[h // g] @ q[b, h].double())
            if soft_cap:
                x = soft_cap * torch.tanh(x / soft_cap)
            if alibi_slopes is not None:
                x = x + float(alibi_slopes[h]) * (j - (length - 1))
            x = x.masked_fill(~attended, -math.inf)
            parts = [x] if sink_logits is None else [x, sink_logits[h].double().reshape(1)]
            logits = torch.cat(parts)
            if logits.numel() == 0 or bool(torch.all(logits == -math.inf)):
                continue
            lse[b, h] = torch.logsumexp(logits, 0)
            p = torch.exp(x - lse[b, h])
            y[b, h] = p @ vals[h // g]
    return y, lse


# ---------------------------------------------------------------------- import without torch

_BLOCKER = textwrap.dedent("""
    import sys

    class Block:
        def __init__(self, names):
            self.names = names
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.names:
                raise ImportError(f"{name} is hidden for this test")
            return None

    sys.meta_path.insert(0, Block(NAMES))
""")


def _without(names, body):
    code = _BLOCKER.replace("NAMES", repr(sorted(names))) + textwrap.dedent(body)
    r = run_python(code)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_import_flashdecoding_needs_no_torch():
    out = _without({"torch", "transformers"}, """
        import flashdecoding as fd
        import flashdecoding.integrations
        desc = fd.FlashDecodingDescriptor.new_gqa(2, 8, 2, 512, 128, fd.ElementKind.BF16)
        print("workspace", fd.FlashDecodingPlan.select(None, desc).workspace_size() >= 0)
        try:
            import flashdecoding.integrations.torch
        except ImportError as e:
            print("torch integration:", e)
        import flashdecoding.integrations.transformers as tf
        try:
            tf.register()
        except ImportError as e:
            print("transformers integration:", e)
        print("torch loaded:", "torch" in sys.modules)
    """)
    assert "workspace True" in out
    assert "torch integration: torch is hidden" in out
    assert "transformers integration: flashdecoding.integrations.transformers needs PyTorch" in out
    assert "torch loaded: False" in out


def test_import_flashdecoding_leaves_torch_unimported():
    r = run_python("import sys, flashdecoding, flashdecoding.integrations\n"
                   "flashdecoding.kernel_cells()\n"
                   "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_transformers_registration_without_transformers_names_what_is_missing():
    out = _without({"transformers"}, """
        import flashdecoding.integrations.transformers as tf
        try:
            tf.register()
        except ImportError as e:
            print("refused:", e)
        else:
            print("registered")
    """)
    assert "refused: flashdecoding.integrations.transformers needs PyTorch and Hugging Face " \
           "transformers" in out
    # the first missing import is named: transformers here, torch where it is absent too
    assert ("transformers is hidden" in out if torch is not None
            else "No module named 'torch'" in out), out


# ---------------------------------------------------------------------- registration

@needs_torch
def test_ops_are_registered_under_the_namespace_once():
    ns = fdt.register()
    assert ns is fdt.register()  # a second call changes nothing
    assert fdt.is_registered()
    for name in fdt.OPS:
        assert getattr(OPS, name).default._schema.name == f"flashdecoding::{name}"


@needs_torch
def test_reimporting_the_module_is_harmless():
    r = run_python(textwrap.dedent("""
        import importlib, torch
        import flashdecoding.integrations.torch as m
        first = torch.ops.flashdecoding.decode.default._schema
        importlib.reload(m)
        m.register(); m.register()
        print(m.is_registered(), str(torch.ops.flashdecoding.decode.default._schema) == str(first))
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True"]


@needs_torch
def test_schemas_mark_what_is_written():
    for name, expected in (("decode_out", ["out"]), ("decode_out_lse", ["out", "lse"])):
        schema = getattr(OPS, name).default._schema
        written = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        assert [a.name for a in written] == expected, name
        # Required and positional: torch's in-place bookkeeping indexes them by position.
        assert all(not a.has_default_value() and not a.kwarg_only for a in written), name
        assert len(schema.returns) == 0, name
    for name in ("decode", "decode_lse"):
        schema = getattr(OPS, name).default._schema
        assert all(a.alias_info is None for a in schema.arguments), name
        assert all(r.alias_info is None for r in schema.returns), name  # fresh outputs
    assert len(OPS.decode_lse.default._schema.returns) == 2


@needs_torch
def test_schema_names_every_extension():
    names = [a.name for a in OPS.decode.default._schema.arguments]
    assert names == ["q", "k", "v"] + list(Extensions._fields)


# ---------------------------------------------------------------------- fake implementations

def meta(*shape, dtype=None):
    return torch.empty(*shape, device="meta", dtype=dtype or torch.bfloat16)


def _contiguous(b=3, hq=8, hkv=2, k_len=100, d=128, dtype=None, kv_dtype=None):
    dtype = dtype or torch.bfloat16
    kv_dtype = kv_dtype or dtype
    return (meta(b, hq, d, dtype=dtype), meta(b, hkv, k_len, d, dtype=kv_dtype),
            meta(b, hkv, k_len, d, dtype=kv_dtype))


def _fake_cases():
    """name -> ((q, k, v) on the meta device, keyword arguments)."""
    return {
        "gqa": (_contiguous(), {}),
        "mha_f16_d64": (_contiguous(2, 4, 4, 33, 64, torch.float16), {"scale": 0.3}),
        "mqa_d256": (_contiguous(1, 16, 1, 4096, 256), {}),
        "lengths_window_sinks": (_contiguous(), {"seq_lens": meta(3, dtype=torch.int32),
                                                 "window": 16, "sink_tokens": 4}),
        "sink_logits_alibi_softcap": (_contiguous(), {
            "sink_logits": meta(8, dtype=torch.float32),
            "alibi_slopes": meta(8, dtype=torch.float32), "soft_cap": 30.0}),
        "paged_nhd": ((meta(3, 8, 128), meta(40, 16, 2, 128), meta(40, 16, 2, 128)),
                      {"block_table": meta(3, 10, dtype=torch.int32),
                       "seq_lens": meta(3, dtype=torch.int32)}),
        "paged_hnd_bound": ((meta(3, 8, 128), meta(40, 2, 16, 128), meta(40, 2, 16, 128)),
                            {"block_table": meta(3, 10, dtype=torch.int32), "kv_layout": "HND",
                             "max_seq_len": 100}),
        "fp8_per_tensor": (_contiguous(kv_dtype=torch.float8_e4m3fn),
                           {"k_scale": 0.5, "v_scale": 2.0}),
        "fp8_per_head": (_contiguous(kv_dtype=torch.float8_e5m2), {
            "k_scales": meta(2, dtype=torch.float32), "v_scales": meta(2, dtype=torch.float32)}),
        "batch_invariant": (_contiguous(), {"batch_invariant": True}),
    }


FAKE_CASES = ["gqa", "mha_f16_d64", "mqa_d256", "lengths_window_sinks", "sink_logits_alibi_softcap",
              "paged_nhd", "paged_hnd_bound", "fp8_per_tensor", "fp8_per_head", "batch_invariant"]


@pytest.mark.parametrize("case", FAKE_CASES)
@needs_torch
def test_fake_outputs_have_the_shapes_of_q(case):
    (q, k, v), kw = _fake_cases()[case]
    y = OPS.decode(q, k, v, **kw)
    assert (y.shape, y.dtype, y.device.type) == (q.shape, q.dtype, "meta")
    assert y.is_contiguous()
    y, lse = OPS.decode_lse(q, k, v, **kw)
    assert y.shape == q.shape and y.dtype == q.dtype
    assert lse.shape == q.shape[:2] and lse.dtype == torch.float32
    out, lse_out = torch.empty_like(q), meta(*q.shape[:2], dtype=torch.float32)
    assert OPS.decode_out_lse(q, k, v, out, lse_out, **kw) is None
    assert OPS.decode_out(q, k, v, out, **kw) is None


@pytest.mark.parametrize("case", FAKE_CASES)
@needs_torch
def test_opcheck_on_meta_tensors(case):
    # Schema, fake implementation and functionalisation agree (torch's own checker).
    (q, k, v), kw = _fake_cases()[case]
    torch.library.opcheck(OPS.decode.default, (q, k, v), kw)
    torch.library.opcheck(OPS.decode_lse.default, (q, k, v), kw)
    out, lse = torch.empty_like(q), meta(*q.shape[:2], dtype=torch.float32)
    torch.library.opcheck(OPS.decode_out.default, (q, k, v, out), kw)
    torch.library.opcheck(OPS.decode_out_lse.default, (q, k, v, out, lse), kw)


@needs_torch
def test_fake_tensor_mode_propagates_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(4, 32, 128, dtype=torch.float16)
        k = torch.empty(4, 8, 1000, 128, dtype=torch.float16)
        y, lse = OPS.decode_lse(q, k, k, window=128)
    assert tuple(y.shape) == (4, 32, 128) and y.dtype == torch.float16
    assert tuple(lse.shape) == (4, 32) and lse.dtype == torch.float32


def _refusals():
    """name -> ((q, k, v), keyword arguments, exception, words of its message)."""
    cases = [
        ("q of rank 2", (meta(8, 128), meta(1, 2, 10, 128), meta(1, 2, 10, 128)), {},
         fd.InvalidProblem, "q: expected shape (B, H_q, D), got (8, 128)"),
        ("k of rank 3", (meta(1, 8, 128), meta(2, 10, 128), meta(1, 2, 10, 128)), {},
         fd.InvalidProblem, "k: expected shape (B, H_kv, K_len, D), got (2, 10, 128)"),
        ("f32 q", _contiguous(dtype=torch.float32), {}, fd.Unsupported,
         "q has dtype float32; q and the output are float16 or bfloat16"),
        ("int8 k", (meta(1, 8, 64), meta(1, 2, 9, 64, dtype=torch.int8), meta(1, 2, 9, 64)), {},
         fd.Unsupported, "k has dtype int8"),
        ("k and v of two types", (meta(1, 8, 64), meta(1, 2, 9, 64),
                                  meta(1, 2, 9, 64, dtype=torch.float8_e4m3fn)), {},
         fd.InvalidProblem, "k has dtype bfloat16 but v has float8_e4m3fn"),
        ("both k scales", _contiguous(kv_dtype=torch.float8_e4m3fn),
         {"k_scale": 1.0, "k_scales": meta(2, dtype=torch.float32)}, fd.InvalidProblem,
         "k_scale and k_scales are both given"),
        ("max_seq_len without a table", _contiguous(), {"max_seq_len": 50}, fd.InvalidProblem,
         "max_seq_len = 50 is the launch bound of a paged cache"),
        ("HND without a table", _contiguous(), {"kv_layout": "HND"}, fd.InvalidProblem,
         "kv_layout = 'HND' applies to page pools"),
        ("unknown layout", _contiguous(), {"kv_layout": "NDH"}, ValueError,
         "kv_layout = 'NDH' must be 'NHD'"),
        ("block table of rank 1", (meta(3, 8, 128), meta(40, 16, 2, 128), meta(40, 16, 2, 128)),
         {"block_table": meta(30, dtype=torch.int32)}, fd.InvalidProblem,
         "block_table: expected int32 [B, max_pages], got int32 (30,)"),
    ]
    return {c[0]: c[1:] for c in cases}


REFUSALS = ["q of rank 2", "k of rank 3", "f32 q", "int8 k", "k and v of two types",
            "both k scales", "max_seq_len without a table", "HND without a table",
            "unknown layout", "block table of rank 1"]


@pytest.mark.parametrize("name", REFUSALS)
@needs_torch
def test_fake_refuses_malformed_calls_with_their_names(name):
    (q, k, v), kw, exc, words = _refusals()[name]
    for call in (lambda: OPS.decode(q, k, v, **kw), lambda: OPS.decode_lse(q, k, v, **kw),
                 lambda: OPS.decode_out(q, k, v, torch.empty_like(q), **kw),
                 lambda: OPS.decode_out_lse(q, k, v, torch.empty_like(q),
                                            meta(*q.shape[:2], dtype=torch.float32), **kw)):
        with pytest.raises(exc) as info:
            call()
        assert words in str(info.value)


@needs_torch
def test_decode_out_fake_checks_the_buffers():
    q, k, v = _contiguous()
    with pytest.raises(fd.InvalidProblem, match=r"out: expected torch.bfloat16 \(3, 8, 128\)"):
        OPS.decode_out(q, k, v, meta(3, 8, 64))
    with pytest.raises(fd.InvalidProblem, match=r"lse: expected torch.float32 \(3, 8\)"):
        OPS.decode_out_lse(q, k, v, torch.empty_like(q), meta(3, 8, dtype=torch.float16))


@needs_torch
def test_cpu_tensors_are_refused_naming_the_device():
    q = torch.zeros(1, 8, 64, dtype=torch.bfloat16)
    k = torch.zeros(1, 2, 16, 64, dtype=torch.bfloat16)
    for call in (lambda: OPS.decode(q, k, k), lambda: fdt.decode(q, k, k, return_lse=True)):
        with pytest.raises(fd.InvalidPointer, match="q is on cpu; flashdecoding runs on CUDA"):
            call()


# ---------------------------------------------------------------------- torch.compile

@needs_torch
def test_compile_fullgraph_traces_through_every_op():
    q, k, v = _contiguous()
    lens = meta(3, dtype=torch.int32)

    def step(q, k, v, lens, out):
        y = torch.ops.flashdecoding.decode(q, k, v, seq_lens=lens, window=8)
        y2, lse = fdt.decode(q, k, v, soft_cap=20.0, return_lse=True)
        fdt.decode(q, k, v, out=out)
        return y + y2 + out, lse.exp()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    y, lse = compiled(q, k, v, lens, torch.empty_like(q))
    assert y.shape == q.shape and lse.shape == q.shape[:2]


@needs_torch
def test_compile_with_dynamic_batch_does_not_specialise_in_the_fake():
    compiled = torch.compile(lambda q, k, v: OPS.decode(q, k, v, window=16),
                             backend="aot_eager", fullgraph=True, dynamic=True)
    for b in (2, 3, 7):
        q, k, v = _contiguous(b=b, k_len=50 + 3 * b)
        assert compiled(q, k, v).shape == q.shape


# ---------------------------------------------------------------------- describe

@needs_torch
def test_describe_reads_the_cache_geometry():
    q, k, v = _contiguous(b=3, hq=8, hkv=2, k_len=100, d=128)
    desc, pref = describe(q, k, v, Extensions(window=8, sink_tokens=2, soft_cap=5.0,
                                              batch_invariant=True))
    want = fd.FlashDecodingDescriptor(3, 8, 2, 100, 128, 1 / math.sqrt(128), fd.ElementKind.BF16,
                                      window=8, sink_tokens=2, soft_cap=5.0)
    assert desc == want and pref is fd.PlanPreference.BATCH_INVARIANT
    bt = meta(3, 10, dtype=torch.int32)
    nhd = describe(q, meta(40, 16, 2, 128), meta(40, 16, 2, 128), Extensions(block_table=bt))[0]
    hnd = describe(q, meta(40, 2, 16, 128), meta(40, 2, 16, 128),
                   Extensions(block_table=bt, kv_layout="HND", max_seq_len=77))[0]
    for d, k_len in ((nhd, 160), (hnd, 77)):
        assert (d.num_kv_heads, d.page_size, d.max_pages, d.num_pages, d.k_len) == \
               (2, 16, 10, 40, k_len)
    fp8 = describe(q, meta(3, 2, 100, 128, dtype=torch.float8_e4m3fn),
                   meta(3, 2, 100, 128, dtype=torch.float8_e4m3fn),
                   Extensions(k_scale=0.5, scale=0.1))[0]
    assert (fp8.kv_element, fp8.k_scale, fp8.v_scale, fp8.scale) == \
           (fd.ElementKind.FP8_E4M3, 0.5, None, 0.1)


@needs_torch
def test_plans_are_cached_per_problem():
    q, k, v = _contiguous(b=1, k_len=65536)
    a = plan_for(*describe(q, k, v, Extensions()))
    assert plan_for(*describe(q, k, v, Extensions())) is a
    assert plan_for(*describe(q, k, v, Extensions(window=64))) is not a
    assert a.workspace_size() > 0  # one long sequence is split: partials need room


# ---------------------------------------------------------------------- mask -> keys

@needs_torch
def test_attended_slots_reads_boolean_masks_only():
    m = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)[:, None, None, :]
    assert torch.equal(_mask_keys.attended_slots(m, 2, 4), m[:, 0, 0])
    assert torch.equal(_mask_keys.attended_slots(m[:1], 3, 3), m[:1, 0, 0, :3].expand(3, 3))
    assert _mask_keys.attended_slots(m.float(), 2, 4) is None  # additive: may carry a bias
    assert _mask_keys.attended_slots(m.expand(2, 4, 1, 4), 2, 4) is None  # per head
    assert _mask_keys.attended_slots(m, 3, 4) is None  # does not broadcast


@needs_torch
def test_lengths_and_table_list_each_sequence_attended_slots_in_order():
    g = torch.Generator().manual_seed(1)
    attended = torch.rand(5, 37, generator=g) < 0.4
    attended[3] = False  # an empty sequence
    lens, table = _mask_keys.lengths_and_table(attended, pages_per_seq=100)
    assert lens.dtype == torch.int32 and table.dtype == torch.int32
    for b in range(5):
        slots = torch.nonzero(attended[b]).flatten()
        assert int(lens[b]) == len(slots)
        assert torch.equal(table[b, :len(slots)].long(), b * 100 + slots)
        assert torch.all((table[b] >= b * 100) & (table[b] < b * 100 + 37))


@needs_torch
def test_one_key_pages_address_every_slot_of_the_cache():
    cache = torch.randn(3, 4, 10, 8)
    pool, per_seq = _mask_keys.one_key_pages(cache)
    assert per_seq == 40 and tuple(pool.shape) == (2 * 40 + 10, 4, 1, 8)
    for b, s in ((0, 0), (1, 7), (2, 9)):
        assert torch.equal(pool[b * per_seq + s, :, 0], cache[b, :, s])
    # A cache slice along the slots (a static cache's filled part) keeps its strides.
    part = cache[:, :, :6]
    pool, per_seq = _mask_keys.one_key_pages(part)
    assert per_seq == 40 and torch.equal(pool[2 * per_seq + 5, :, 0], part[2, :, 5])
    # A cache that starts inside its storage (a batch slice) keeps its offset.
    tail = cache[1:]
    pool, per_seq = _mask_keys.one_key_pages(tail)
    assert torch.equal(pool[1 * per_seq + 3, :, 0], tail[1, :, 3])
    # D must be contiguous; a batch stride that is no multiple of the slot stride has no pages.
    assert _mask_keys.one_key_pages(cache.transpose(2, 3)) is None
    odd = torch.randn(3 * 4 * 10 * 8 + 3).as_strided((3, 4, 10, 8), (4 * 10 * 8 + 1, 80, 8, 1))
    assert _mask_keys.one_key_pages(odd) is None


@needs_torch
def test_table_memo_serves_one_table_per_mask_and_rebuilds_on_change():
    memo = _mask_keys.TableMemo()
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    att = mask[:, 0, 0]
    first = memo.get(mask, att, 6)
    assert memo.get(mask, att, 6) is first
    mask[1, 0, 0, 4:] = False  # in place: the version counter moves
    lens, _ = memo.get(mask, mask[:, 0, 0], 6)
    assert lens.tolist() == [6, 4]
    other = mask.clone()
    assert memo.get(other, other[:, 0, 0], 6) is not memo.get(mask, mask[:, 0, 0], 6)


# ---------------------------------------------------------------------- transformers on CPU

def _transformers():
    return pytest.importorskip("transformers", reason="Hugging Face transformers is not importable")


class ReferenceOps:
    """torch.ops.flashdecoding's decode computed by reference_decode (float64), so the
    backend's glue runs on CPU; the GPU tests run the real kernels."""

    def __init__(self):
        self.calls = 0

    def decode(self, q, k, v, **kw):
        self.calls += 1
        y, _ = reference_decode(q, k, v, **kw)
        return y.to(q.dtype)


@pytest.fixture
def cpu_backend(monkeypatch):
    """The transformers backend on CPU, its decode op replaced by ReferenceOps."""
    _transformers()
    from flashdecoding.integrations import transformers as tfi

    ops = ReferenceOps()
    monkeypatch.setattr(tfi, "_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(tfi, "_ops", lambda: ops)
    monkeypatch.setattr(tfi, "_DTYPE_NAMES", ("float16", "bfloat16", "float32"))
    tfi.reset_stats()
    return tfi, ops


@needs_torch
def test_register_is_harmless_twice_and_sets_both_interfaces():
    _transformers()
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from flashdecoding.integrations import transformers as tfi

    assert tfi.register() == "flashdecoding" == tfi.register()
    assert ALL_ATTENTION_FUNCTIONS["flashdecoding"] is tfi.attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS["flashdecoding"] is sdpa_mask
    assert "flashdecoding" in tfi.registered_names()


@needs_torch
def test_a_model_is_built_with_the_name_in_a_fresh_process():
    # transformers takes names containing "flash" for flash-attention kernels to fetch.
    _transformers()
    r = run_python(textwrap.dedent("""
        import flashdecoding.integrations.transformers
        from transformers import AutoModelForCausalLM, LlamaConfig
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2)
        m = AutoModelForCausalLM.from_config(cfg, attn_implementation="flashdecoding")
        n = AutoModelForCausalLM.from_config(cfg)
        n.set_attn_implementation("flashdecoding")
        print(m.config._attn_implementation, n.config._attn_implementation)
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["flashdecoding", "flashdecoding"]


def _configs():
    tf = _transformers()
    small = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return {
        "llama": tf.LlamaConfig(**small),
        "mistral": tf.MistralConfig(**small, sliding_window=5),
        # A soft-cap small enough to bend these logits, a scale that is not 1/sqrt(D).
        "gemma2": tf.Gemma2Config(**small, head_dim=32, sliding_window=5, initializer_range=0.1,
                                  attn_logit_softcapping=0.5, query_pre_attn_scalar=8),
    }


def _model(cfg, attn, state=None):
    """A model of ``cfg`` (copied: a model writes its attention choice into its config)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=attn).eval()
    if state is not None:
        m.load_state_dict(state)
    return m


def _teacher_forced(model, tokens, mask, prompt_len, cache):
    """Next-token logits at every step: prefill the prompt, then feed the given tokens
    one at a time."""
    from transformers import DynamicCache, StaticCache

    cache = (StaticCache(config=model.config, max_cache_len=tokens.shape[1]) if cache == "static"
             else DynamicCache(config=model.config))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = []
    with torch.no_grad():
        out = model(input_ids=tokens[:, :prompt_len], attention_mask=mask[:, :prompt_len],
                    position_ids=pos[:, :prompt_len], past_key_values=cache, use_cache=True)
        logits.append(out.logits[:, -1])
        for t in range(prompt_len, tokens.shape[1]):
            out = model(input_ids=tokens[:, t:t + 1], attention_mask=mask[:, :t + 1],
                        position_ids=pos[:, t:t + 1], past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


@pytest.mark.parametrize("padding", ["left_padded", "unpadded"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2"])
@needs_torch
def test_decode_glue_matches_eager_attention_on_cpu(cpu_backend, family, cache, padding):
    """f32 on CPU: every decode step goes through the backend -- the mask -> (lengths,
    block table over the cache) path, or without a mask (a dynamic cache of unpadded
    sequences) the contiguous one -- into the reference op, and the logits equal the
    model's own eager attention (soft-cap and sliding window included; the sliding
    caches wrap around within the 13 tokens)."""
    tfi, ops = cpu_backend
    cfg = _configs()[family]
    torch.manual_seed(0)
    eager = _model(cfg, "eager")
    ours = _model(cfg, "flashdecoding", eager.state_dict())
    tokens = torch.randint(1, cfg.vocab_size, (3, 13), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(tokens)
    if padding == "left_padded":
        mask[1, :3] = 0
        mask[2, :1] = 0
    want = _teacher_forced(eager, tokens, mask, 6, cache)
    got = _teacher_forced(ours, tokens, mask, 6, cache)
    steps = tokens.shape[1] - 6
    assert ops.calls == steps * cfg.num_hidden_layers
    assert tfi.stats()["decode"] == steps * cfg.num_hidden_layers
    assert tfi.stats()["fallback"] == 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_torch
def test_decode_steps_flashdecoding_cannot_run_fall_back_and_are_counted(cpu_backend):
    tfi, ops = cpu_backend
    cfg = _configs()["llama"]
    torch.manual_seed(0)
    sdpa = _model(cfg, "sdpa")
    ours = _model(cfg, "flashdecoding", sdpa.state_dict())
    tfi._DEVICE_TYPES = ("cuda",)  # monkeypatch restores it: CPU is refused again
    tokens = torch.randint(1, cfg.vocab_size, (2, 8))
    mask = torch.ones_like(tokens)
    want = _teacher_forced(sdpa, tokens, mask, 5, "dynamic")
    got = _teacher_forced(ours, tokens, mask, 5, "dynamic")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    s = tfi.stats()
    assert ops.calls == 0 and s["decode"] == 0
    assert s["fallback"] == s["fallback:device"] == 3 * cfg.num_hidden_layers
    assert s["prefill"] == cfg.num_hidden_layers


@needs_torch
def test_a_static_cache_decode_step_compiles_fullgraph_on_cpu():
    """torch.compile(fullgraph=True) traces a transformers decode step through the
    backend (mask -> table -> op) with no graph break; the op's CPU kernel is the
    float64 reference here (in a subprocess: it replaces the CPU refusal)."""
    _transformers()
    r = run_python(textwrap.dedent("""
        import torch
        import test_torch_op as t
        from flashdecoding.integrations import transformers as tfi
        from flashdecoding.integrations._torch_launch import Extensions
        from transformers import AutoModelForCausalLM, MistralConfig, StaticCache

        def reference(q, k, v, *args, **kw):
            return t.reference_decode(q, k, v, **Extensions(*args, **kw)._asdict())[0].to(q.dtype)

        torch.library.register_kernel("flashdecoding::decode", "cpu", reference)
        tfi._DEVICE_TYPES = ("cuda", "cpu")
        cfg = MistralConfig(vocab_size=96, hidden_size=64, intermediate_size=96,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            sliding_window=5)
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(cfg, attn_implementation="flashdecoding",
                                             dtype=torch.bfloat16).eval()
        ids = torch.randint(1, 96, (2, 6))
        caches = [StaticCache(config=m.config, max_cache_len=20) for _ in range(2)]
        with torch.no_grad():
            for c in caches:
                out = m(input_ids=ids, past_key_values=c, use_cache=True)
            step = lambda tok, c: m(input_ids=tok, past_key_values=c, use_cache=True).logits[:, -1]
            compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
            te = tc = out.logits[:, -1:].argmax(-1)
            for _ in range(8):  # past the window of 5: the sliding caches wrap around
                le, lc = step(te, caches[0]), compiled(tc, caches[1])
                te, tc = le.argmax(-1, keepdim=True), lc.argmax(-1, keepdim=True)
                assert torch.equal(le, lc)
        s = tfi.stats()
        print(s["decode"], s["fallback"])
    """))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split()[-2:] == ["16", "0"]  # the eager steps: 8 x 2 layers
