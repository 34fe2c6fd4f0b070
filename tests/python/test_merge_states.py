"""Host-only tests of merge_states: the fd_merge_params it builds (any strides) and
each refusal with its message, over made-up device addresses. The launch
(merge._c_merge) is replaced by fd_merge_states_check, the checks fd_merge_states
makes before launching, so nothing is ever written."""
from __future__ import annotations

import pytest

import flashdecoding as fd
from flashdecoding import _capi
from conftest import RecordedLaunches, addr

N, B, H, D = 3, 2, 4, 64


@pytest.fixture
def launches(monkeypatch):
    rec = RecordedLaunches(_capi.FdMergeParams, "fd_merge_states_check")
    monkeypatch.setattr(fd.merge, "_c_merge", rec)
    return rec


def ref(i, shape, dtype, stride=None, offset=0):
    return fd.TensorRef(addr(i) + offset, shape, stride, dtype=dtype)


def mut(i, shape, dtype, stride=None, offset=0):
    return fd.TensorMut(addr(i) + offset, shape, stride, dtype=dtype)


def merge(dtype="float16", **kw):
    states = kw.pop("states", ref(0, (N, B, H, D), dtype))
    lse = kw.pop("lse", ref(1, (N, B, H), "float32"))
    out = kw.pop("out", mut(2, (B, H, D), dtype))
    return fd.merge_states(states, lse, out=out, **kw)


@pytest.mark.parametrize("dtype, code", [("float16", 1), ("bfloat16", 2), ("float32", 3)])
def test_merge_params_of_contiguous_arrays(launches, dtype, code):
    y = merge(dtype, stream=5)
    assert isinstance(y, fd.TensorMut) and launches.statuses == [0]
    p = launches.calls[0]
    assert (p.dtype, p.num_states, p.batch_size, p.num_heads, p.head_dim, p.reserved) == \
        (code, N, B, H, D, 0)
    assert (p.states, p.y, p.stream) == (addr(0), addr(2), 5)
    assert (p.state_stride_n, p.state_stride_b, p.state_stride_h) == (B * H * D, H * D, D)
    assert (p.lse_stride_n, p.lse_stride_b, p.lse_stride_h) == (B * H, H, 1)
    assert (p.y_stride_b, p.y_stride_h) == (H * D, D)
    assert _capi.address_of(p.lse) == addr(1) and _capi.address_of(p.lse_out) == 0


def test_any_strides_and_lse_out(launches):
    # states as [B, N, H, D] in memory (e.g. decoded partials interleaved), lse [H, N, B]
    states = ref(0, (N, B, H, D), "bfloat16", stride=(H * D, N * H * D, D, 1))
    lse = ref(1, (N, B, H), "float32", stride=(B, 1, N * B))
    out = mut(2, (B, H, D), "bfloat16", stride=(H * (D + 8), D + 8, 1))
    lse_out = mut(3, (B, H), "float32", stride=(1, B))
    y, lo = merge(states=states, lse=lse, out=out, lse_out=lse_out, return_lse=True)
    assert y is out and lo is lse_out and launches.statuses == [0]
    p = launches.calls[0]
    assert (p.state_stride_n, p.state_stride_b, p.state_stride_h) == (H * D, N * H * D, D)
    assert (p.lse_stride_n, p.lse_stride_b, p.lse_stride_h) == (B, 1, N * B)
    assert (p.y_stride_b, p.y_stride_h) == (H * (D + 8), D + 8)
    assert _capi.address_of(p.lse_out) == addr(3)
    assert (p.lse_out_stride_b, p.lse_out_stride_h) == (1, B)


def test_check_merge_states_is_host_only():
    assert fd.check_merge_states(ref(0, (N, B, H, D), "float32"), ref(1, (N, B, H), "float32"),
                                 mut(2, (B, H, D), "float32")) is None
    with pytest.raises(fd.InvalidPointer, match="y overlaps states"):
        fd.check_merge_states(ref(0, (N, B, H, D), "float32"), ref(1, (N, B, H), "float32"),
                              mut(0, (B, H, D), "float32"))


@pytest.mark.parametrize("kw, exc, words", [
    (dict(states=ref(0, (B, H, D), "float16")), fd.InvalidProblem,
     "states: expected shape (N, B, H, D), got (2, 4, 64)"),
    (dict(states=ref(0, (N, B, H, D), "float64"), out=mut(2, (B, H, D), "float64")), fd.Unsupported,
     "states has dtype float64; merge_states takes float16, bfloat16 or float32 states"),
    (dict(states=ref(0, (N, B, H, D), "float8_e4m3fn")), fd.Unsupported, "float8_e4m3fn"),
    (dict(states=fd.TensorRef(addr(0), (N, B, H, D))), TypeError, "needs the states' dtype"),
    (dict(states=ref(0, (N, B, H, D), "float16", stride=(2 * B * H * D, 2 * H * D, 2 * D, 2))),
     fd.InvalidProblem, "states: the D axis stride must be 1"),
    (dict(lse=ref(1, (N, B, H), "float16")), fd.InvalidProblem,
     "lse: expected float32 [N, B, H] = (3, 2, 4), got float16 (3, 2, 4)"),
    (dict(lse=ref(1, (N, B), "float32")), fd.InvalidProblem,
     "lse: expected float32 [N, B, H] = (3, 2, 4), got float32 (3, 2)"),
    (dict(out=mut(2, (B, H, D), "bfloat16")), fd.InvalidProblem,
     "y: expected float16 [B, H, D] = (2, 4, 64), got bfloat16 (2, 4, 64)"),
    (dict(out=mut(2, (B, H, D + 1), "float16")), fd.InvalidProblem,
     "y: expected float16 [B, H, D] = (2, 4, 64), got float16 (2, 4, 65)"),
    (dict(out=mut(2, (B, H, D), "float16", stride=(H * D * 2, D * 2, 2))), fd.InvalidProblem,
     "y: the D axis stride must be 1"),
    (dict(lse_out=mut(3, (B, H), "float16")), fd.InvalidProblem,
     "lse_out: expected float32 [B, H] = (2, 4), got float16 (2, 4)"),
    (dict(lse_out=mut(3, (H, B), "float32")), fd.InvalidProblem,
     "lse_out: expected float32 [B, H] = (2, 4), got float32 (4, 2)"),
    # the library's rules, in its words
    (dict(states=ref(0, (0, B, H, D), "float16"), lse=ref(1, (0, B, H), "float32")),
     fd.InvalidProblem, "num_states = 0 must be >= 1"),
    (dict(states=ref(0, (N, B, H, 257), "float16"), out=mut(2, (B, H, 257), "float16")),
     fd.Unsupported, "head_dim = 257 exceeds the maximum 256"),
    (dict(out=mut(2, (B, H, D), "float16", stride=(D, 0, 1))), fd.InvalidProblem, "y rows overlap"),
    (dict(lse=ref(1, (N, B, H), "float32", stride=(-B * H, H, 1))), fd.InvalidProblem,
     "lse_stride_n = -8 must be >= 0"),
    (dict(lse_out=mut(3, (B, H), "float32", stride=(0, 0))), fd.InvalidProblem,
     "lse_out entries overlap"),
    (dict(out=mut(0, (B, H, D), "float16", offset=128)), fd.InvalidPointer, "y overlaps states"),
    (dict(lse_out=mut(1, (B, H), "float32")), fd.InvalidPointer, "lse_out overlaps lse"),
    (dict(lse_out=mut(2, (B, H), "float32")), fd.InvalidPointer, "lse_out overlaps y"),
    (dict(lse=ref(1, (N, B, H), "float32", offset=2)), fd.InvalidPointer,
     "lse = 0x"),
    (dict(states=ref(0, (N, B, H, D), "float16", offset=1)), fd.InvalidPointer,
     "states = 0x"),
    (dict(states=fd.TensorRef(0, (N, B, H, D), dtype="float16")), fd.InvalidPointer,
     "states is NULL"),
])
def test_merge_refusals_name_the_argument_and_write_nothing(launches, kw, exc, words):
    with pytest.raises(exc) as info:
        merge(**kw)
    assert words in str(info.value)
    assert all(s != 0 for s in launches.statuses)


def test_merge_needs_out_for_bare_addresses():
    with pytest.raises(TypeError):
        fd.merge_states(fd.TensorRef(addr(0), (N, B, H, D)), ref(1, (N, B, H), "float32"))
