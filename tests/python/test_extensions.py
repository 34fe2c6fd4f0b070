"""Host-only tests of the extension arguments (LSE, per-sequence lengths, window,
StreamingLLM sink tokens, sink logits, ALiBi, soft-cap, batch invariance), through
the plan API and through flash_decode, over made-up device addresses.

flash_decode's launch (plan._c_decode) is replaced by fd_decode_check, which makes
the very checks fd_decode makes before it launches: each test sees the exact
fd_decode_params a call hands the library, an accepted call reaches it exactly
once, and a refused call either never reaches it (Python refused) or is refused
there, so nothing is ever written."""
from __future__ import annotations

import ctypes
import math

import pytest

import flashdecoding as fd
from flashdecoding import _capi, _native
from conftest import addr

DESC = fd.FlashDecodingDescriptor.new_gqa(2, 8, 2, 100, 64, fd.ElementKind.F16)


def ref(i, shape, dtype="float16", stride=None, offset=0):
    return fd.TensorRef(addr(i) + offset, shape, stride, dtype=dtype)


def mut(i, shape, dtype="float16", stride=None, offset=0):
    return fd.TensorMut(addr(i) + offset, shape, stride, dtype=dtype)


def qkvy(desc=DESC):
    return (ref(0, desc.q_shape()), ref(1, desc.kv_shape()), ref(2, desc.kv_shape()),
            mut(3, desc.y_shape()))


def extras(desc=DESC, **change):
    b, h, hkv = desc.batch_size, desc.num_heads, desc.num_kv_heads
    out = dict(lse=mut(4, (b, h), "float32"), seq_lens=ref(5, (b,), "int32"),
               sink_logits=ref(6, (h,), "float32"), alibi_slopes=ref(7, (h,), "float32"))
    out.update(change)
    return {k: v for k, v in out.items() if v is not None}


def address(field) -> int:
    return _capi.address_of(field)


# ---------------------------------------------------------------- the plan API

def test_every_extension_is_accepted_and_reaches_the_params():
    desc = DESC.with_window(16, sink_tokens=4).with_soft_cap(30.0)
    plan = fd.FlashDecodingPlan.select(None, desc, fd.PlanPreference.BATCH_INVARIANT)
    args = fd.FlashDecodingArgs(*qkvy(desc), **extras(desc))
    assert plan.can_implement(args) is None
    p = plan._params(args, fd.Workspace(addr(9), plan.workspace_size()), 0)
    assert (p.window_size, p.sink_tokens, p.logits_soft_cap) == (16, 4, 30.0)
    assert p.flags == _capi.FD_FLAG_BATCH_INVARIANT
    assert address(p.lse) == addr(4) and (p.lse_stride_b, p.lse_stride_h) == (8, 1)
    assert address(p.seq_lens) == addr(5) and address(p.sinks) == addr(6)
    assert address(p.alibi_slopes) == addr(7)
    assert address(p.k_scales) == address(p.v_scales) == 0 and address(p.block_table) == 0
    assert _native.lib().fd_decode_check(ctypes.byref(p)) == 0


@pytest.mark.parametrize("name, bad, words", [
    ("lse", mut(4, (2, 8), "float16"), "lse: expected float32 [B, H_q] = (2, 8), got float16 (2, 8)"),
    ("lse", mut(4, (2, 2), "float32"), "lse: expected float32 [B, H_q] = (2, 8), got float32 (2, 2)"),
    ("lse", mut(4, (16,), "float32"), "lse: expected float32 [B, H_q] = (2, 8), got float32 (16,)"),
    ("seq_lens", ref(5, (2,), "float32"), "seq_lens: expected int32 [B] = (2,), got float32 (2,)"),
    ("seq_lens", ref(5, (2,), "int64"), "seq_lens: expected int32 [B] = (2,), got int64 (2,)"),
    ("seq_lens", ref(5, (3,), "int32"), "seq_lens: expected int32 [B] = (2,), got int32 (3,)"),
    ("seq_lens", ref(5, (2,), "int32", stride=(2,)),
     "seq_lens: expected a contiguous int32 [B] array (stride 1 along B), got strides (2,)"),
    ("sink_logits", ref(6, (2,), "float32"),
     "sink_logits: expected float32 [H_q] = (8,), got float32 (2,)"),
    ("sink_logits", ref(6, (8,), "bfloat16"),
     "sink_logits: expected float32 [H_q] = (8,), got bfloat16 (8,)"),
    ("alibi_slopes", ref(7, (8, 1), "float32"),
     "alibi_slopes: expected float32 [H_q] = (8,), got float32 (8, 1)"),
    ("alibi_slopes", ref(7, (8,), "float32", stride=(0,)),
     "alibi_slopes: expected a contiguous float32 [H_q] array (stride 1 along H_q), got strides (0,)"),
    ("k_scales", ref(8, (8,), "float32"), "k_scales: expected float32 [H_kv] = (2,), got float32 (8,)"),
    ("v_scales", ref(8, (2,), "float16"), "v_scales: expected float32 [H_kv] = (2,), got float16 (2,)"),
])
def test_python_names_the_array_its_dtype_and_shape(name, bad, words):
    plan = fd.FlashDecodingPlan.select(None, DESC)
    args = fd.FlashDecodingArgs(*qkvy(), **extras(**{name: bad}))
    with pytest.raises(fd.InvalidProblem) as info:
        plan.can_implement(args)
    assert str(info.value) == words


@pytest.mark.parametrize("change, exc, words", [
    # misaligned device arrays (4-byte types)
    (dict(lse=mut(4, (2, 8), "float32", offset=2)), fd.InvalidPointer, "lse = 0x"),
    (dict(seq_lens=ref(5, (2,), "int32", offset=2)), fd.InvalidPointer, "seq_lens = 0x"),
    (dict(sink_logits=ref(6, (8,), "float32", offset=1)), fd.InvalidPointer, "sinks = 0x"),
    (dict(alibi_slopes=ref(7, (8,), "float32", offset=2)), fd.InvalidPointer, "alibi_slopes = 0x"),
    # the outputs (y, lse) alias nothing
    (dict(lse=mut(3, (2, 8), "float32")), fd.InvalidPointer, "lse [0x"),
    (dict(lse=mut(5, (2, 8), "float32")), fd.InvalidPointer, "overlaps seq_lens"),
    (dict(sink_logits=ref(3, (8,), "float32")), fd.InvalidPointer, "overlaps sinks"),
    (dict(alibi_slopes=ref(3, (8,), "float32", offset=64)), fd.InvalidPointer,
     "overlaps alibi_slopes"),
    # lse entries written twice
    (dict(lse=mut(4, (2, 8), "float32", stride=(0, 1))), fd.InvalidProblem, "lse entries overlap"),
    (dict(lse=mut(4, (2, 8), "float32", stride=(8, -1))), fd.InvalidProblem,
     "lse_stride_h = -1 must be >= 0"),
    # per-head fp8 scales with a 16-bit cache
    (dict(k_scales=ref(8, (2,), "float32")), fd.Unsupported,
     "k_scales is set but the KV cache is f16: scales apply to fp8 KV caches only"),
])
def test_the_library_refuses_with_its_message(change, exc, words):
    plan = fd.FlashDecodingPlan.select(None, DESC)
    args = fd.FlashDecodingArgs(*qkvy(), **extras(**change))
    with pytest.raises(exc) as info:
        plan.can_implement(args)
    assert words in str(info.value)
    assert type(info.value) is exc


def test_a_refused_run_never_launches(launches):
    plan = fd.FlashDecodingPlan.select(None, DESC)
    bad = fd.FlashDecodingArgs(*qkvy(), **extras(seq_lens=ref(5, (2,), "float32")))
    with pytest.raises(fd.InvalidProblem, match="seq_lens"):
        plan.run(None, fd.Workspace(addr(9), plan.workspace_size()), bad)
    assert launches.calls == []  # Python refused: fd_decode never called
    overlapping = fd.FlashDecodingArgs(*qkvy(), **extras(lse=mut(3, (2, 8), "float32")))
    with pytest.raises(fd.InvalidPointer, match="overlaps"):
        plan.run(None, fd.Workspace(addr(9), plan.workspace_size()), overlapping)
    assert launches.statuses == [fd.InvalidPointer.status]  # refused before any launch


def test_one_run_is_one_fd_decode(launches):
    plan = fd.FlashDecodingPlan.select(None, DESC)
    plan.run(7, fd.Workspace(addr(9), plan.workspace_size()),
             fd.FlashDecodingArgs(*qkvy(), **extras()))
    assert launches.statuses == [0]
    assert launches.calls[0].stream == 7


# ---------------------------------------------------------------- flash_decode

def test_flash_decode_passes_every_extension(launches):
    q, k, v, y = qkvy()
    lse = mut(4, (2, 8), "float32")
    got = fd.flash_decode(q, k, v, out=y, lse=lse, workspace=(addr(9), 1 << 20),
                          seq_lens=ref(5, (2,), "int32"), window=32, sink_tokens=4,
                          sink_logits=ref(6, (8,), "float32"),
                          alibi_slopes=ref(7, (8,), "float32"), soft_cap=50.0,
                          batch_invariant=True, scale=0.3, stream=11)
    assert got is y
    assert launches.statuses == [0] and len(launches.calls) == 1
    p = launches.calls[0]
    assert (p.window_size, p.sink_tokens, p.logits_soft_cap, p.flags) == (32, 4, 50.0, 1)
    assert p.scale == pytest.approx(0.3) and p.stream == 11
    assert address(p.lse) == addr(4) and address(p.seq_lens) == addr(5)
    assert address(p.sinks) == addr(6) and address(p.alibi_slopes) == addr(7)
    assert (p.workspace, p.workspace_bytes) == (addr(9), 1 << 20)
    assert (p.k_stride_b, p.k_stride_h, p.k_stride_k) == (2 * 100 * 64, 100 * 64, 64)


def test_flash_decode_defaults_are_off(launches):
    fd.flash_decode(*qkvy()[:3], out=qkvy()[3], workspace=(addr(9), 1 << 20))
    p = launches.calls[0]
    assert (p.window_size, p.sink_tokens, p.logits_soft_cap, p.flags, p.kv_dtype) == (0, 0, 0, 0, 0)
    assert p.scale == pytest.approx(1 / 8)
    for field in ("lse", "seq_lens", "sinks", "alibi_slopes", "k_scales", "v_scales",
                  "block_table"):
        assert address(getattr(p, field)) == 0, field


def test_flash_decode_return_lse_returns_the_given_lse(launches):
    q, k, v, y = qkvy()
    lse = mut(4, (2, 8), "float32")
    out, got_lse = fd.flash_decode(q, k, v, out=y, lse=lse, return_lse=True,
                                   workspace=(addr(9), 1 << 20))
    assert out is y and got_lse is lse
    # lse given without return_lse: written, y alone returned
    assert fd.flash_decode(q, k, v, out=y, lse=lse, workspace=(addr(9), 1 << 20)) is y
    assert address(launches.calls[1].lse) == addr(4)


def test_flash_decode_return_lse_needs_lse_for_a_bare_address():
    q, k, v, y = (fd.TensorRef(addr(0), DESC.q_shape()), *qkvy()[1:3], qkvy()[3])
    with pytest.raises(TypeError):
        fd.flash_decode(q, k, v, out=y, return_lse=True)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(window=0), fd.InvalidProblem, "window = 0 must be None (full attention) or >= 1"),
    (dict(window=-1), fd.InvalidProblem, "window = -1 must be None"),
    (dict(window=2.5), TypeError, "window must be an integer"),
    (dict(sink_tokens=-2, window=8), fd.InvalidProblem, "sink_tokens = -2 must be 0 (off) or >= 1"),
    (dict(soft_cap=0.0), fd.InvalidProblem, "soft_cap = 0.0 must be finite and > 0"),
    (dict(soft_cap=float("nan")), fd.InvalidProblem, "soft_cap = nan must be finite"),
    (dict(seq_lens=ref(5, (2,), "float32")), fd.InvalidProblem,
     "seq_lens: expected int32 [B] = (2,), got float32 (2,)"),
    (dict(seq_lens=ref(5, (4,), "int32")), fd.InvalidProblem,
     "seq_lens: expected int32 [B] = (2,), got int32 (4,)"),
    (dict(sink_logits=ref(6, (2,), "float32")), fd.InvalidProblem,
     "sink_logits: expected float32 [H_q] = (8,), got float32 (2,)"),
    (dict(alibi_slopes=ref(7, (8,), "float64")), fd.InvalidProblem,
     "alibi_slopes: expected float32 [H_q] = (8,), got float64 (8,)"),
    (dict(lse=mut(4, (8, 2), "float32")), fd.InvalidProblem,
     "lse: expected float32 [B, H_q] = (2, 8), got float32 (8, 2)"),
    (dict(lse=mut(3, (2, 8), "float32")), fd.InvalidPointer, "overlaps"),
    (dict(k_scale=2.0), fd.Unsupported, "k_scale is set but the KV cache is f16"),
    (dict(kv_layout="HND"), fd.InvalidProblem, "kv_layout = 'HND' applies to page pools"),
    (dict(max_seq_len=50), fd.InvalidProblem, "max_seq_len applies to page pools"),
])
def test_flash_decode_refusals_name_the_argument_and_write_nothing(launches, kwargs, exc, words):
    q, k, v, y = qkvy()
    with pytest.raises(exc) as info:
        fd.flash_decode(q, k, v, out=y, workspace=(addr(9), 1 << 20), **kwargs)
    assert words in str(info.value)
    # never launched, or refused by the checks fd_decode makes before launching
    assert all(s != 0 for s in launches.statuses)


def test_flash_decode_makes_one_c_check_per_call(monkeypatch, launches):
    """The plan is cached; a call is Python's checks plus one fd_decode (which checks
    once): no fd_decode_check / fd_flash_decoding_check of its own."""
    q, k, v, y = qkvy()
    fd.flash_decode(q, k, v, out=y, workspace=(addr(9), 1 << 20), window=8)  # plans
    counts = {}
    real = _native.lib()

    class Counting:
        def __getattr__(self, name):
            counts[name] = counts.get(name, 0) + 1
            return getattr(real, name)

    monkeypatch.setattr(_native, "_lib", Counting())
    fd.flash_decode(q, k, v, out=y, workspace=(addr(9), 1 << 20), window=8)
    assert len(launches.calls) == 2 and launches.statuses == [0, 0]
    assert not {"fd_decode_check", "fd_flash_decoding_check", "fd_decode_workspace_size",
                "fd_flash_decoding_check_problem"} & set(counts), counts


def test_flash_decode_plans_are_cached_per_problem(launches):
    from flashdecoding import api

    q, k, v, y = qkvy()
    fd.flash_decode(q, k, v, out=y, workspace=(addr(9), 1 << 20), window=5, sink_tokens=2)
    n = api.plan_cache_info()
    fd.flash_decode(q, k, v, out=y, workspace=(addr(9), 1 << 20), window=5, sink_tokens=2)
    assert api.plan_cache_info() == n
    fd.flash_decode(q, k, v, out=y, workspace=(addr(9), 1 << 20), window=6, sink_tokens=2)
    assert api.plan_cache_info() == min(n + 1, api._PLAN_CACHE_SIZE)
    assert [c.window_size for c in launches.calls] == [5, 5, 6]


def test_flash_decode_small_workspace_is_refused_with_the_sizes(launches):
    q, k, v, y = qkvy(fd.FlashDecodingDescriptor.new_gqa(1, 32, 8, 65536, 128))
    with pytest.raises(fd.WorkspaceTooSmall) as info:
        fd.flash_decode(q, k, v, out=y, workspace=(addr(9), 64))
    assert info.value.got == 64 and info.value.needed > 64
    assert launches.statuses == [fd.WorkspaceTooSmall.status]


def test_sink_kinds_are_different_arguments():
    """sink_tokens (StreamingLLM keys kept under a window) and sink_logits (gpt-oss
    per-head logits) are separate fields of the params struct."""
    plan = fd.FlashDecodingPlan.select(None, DESC.with_window(8, sink_tokens=4))
    p = plan._params(fd.FlashDecodingArgs(*qkvy(), sink_logits=ref(6, (8,), "float32")),
                     fd.Workspace(addr(9), plan.workspace_size()), 0)
    assert p.sink_tokens == 4 and address(p.sinks) == addr(6)
    assert not math.isnan(p.scale)


def test_flash_decode_signature():
    import inspect

    params = inspect.signature(fd.flash_decode).parameters
    assert list(params)[:3] == ["q", "k", "v"]
    expected = dict(scale=None, out=None, lse=None, stream=None, workspace=None, seq_lens=None,
                    window=None, sink_tokens=0, sink_logits=None, alibi_slopes=None,
                    soft_cap=None, batch_invariant=False, return_lse=False, block_table=None,
                    kv_layout="NHD", max_seq_len=None, k_scale=None, v_scale=None)
    assert list(params)[3:] == list(expected)
    for name, default in expected.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == default, name
    merge = inspect.signature(fd.merge_states).parameters
    assert list(merge) == ["states", "lse", "out", "lse_out", "return_lse", "stream"]
