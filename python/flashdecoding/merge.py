"""merge_states: N partial attention results over disjoint key sets, combined
into the exact result (fd_merge_states).

Each state is (y_i, lse_i) of the same queries over its own keys, as
``flash_decode(..., return_lse=True)`` returns them: m = max lse_i,
w_i = exp(lse_i - m), y = sum w_i y_i / sum w_i, lse = m + log(sum w_i), in f32
with natural-log LSEs (FlashInfer's base-2 LSE converts as lse2 * ln 2). A
state with lse = -inf (no keys) weighs nothing; all -inf gives y = 0 and
lse = -inf; a NaN lse makes the row NaN. States are summed in index order, so
the bits do not depend on timing. Used for shared-prefix (cascade) decoding and
for splitting a long cache across calls or devices.
"""
from __future__ import annotations

import ctypes
from typing import Any, Optional

from . import _capi, _native
from .descriptor import as_int32, as_int64
from .errors import InvalidProblem, Unsupported
from .kinds import ElementKind
from .tensor import TensorMut, TensorRef, as_mut, as_ref

_STATE_ELEMENTS = (ElementKind.F16, ElementKind.BF16, ElementKind.F32)


def _c_merge(params: _capi.FdMergeParams) -> int:
    """The one launch of a merge: fd_merge_states (checks, then launches)."""
    return _native.lib().fd_merge_states(ctypes.byref(params))


def _check_f32(name: str, t: TensorRef, axes, shape) -> None:
    got = None if t.dtype_name is None else str(t.dtype_name).lower().replace("torch.", "")
    if (got is not None and got != "float32") or t.shape != tuple(shape):
        raise InvalidProblem(f"{name}: expected float32 [{', '.join(axes)}] = {tuple(shape)}, "
                             f"got {got or 'an untyped array'} {t.shape}")


def _check_rows(name: str, t: TensorRef, element: ElementKind, shape, axes) -> None:
    if (t.dtype_name is not None and t.element is not element) or t.shape != tuple(shape):
        raise InvalidProblem(f"{name}: expected {element.dtype_name} [{', '.join(axes)}] = "
                             f"{tuple(shape)}, got {t.dtype_name or 'an untyped array'} {t.shape}")
    if shape[-1] > 1 and t.stride[-1] != 1:
        raise InvalidProblem(f"{name}: the D axis stride must be 1 (contiguous), "
                             f"got {t.stride[-1]}")


def merge_params(states: TensorRef, lse: TensorRef, y: TensorMut,
                 lse_out: Optional[TensorMut] = None, stream: int = 0) -> _capi.FdMergeParams:
    """fd_merge_params of a merge, after Python's checks: states [N, B, H, D] (f16,
    bf16 or f32, D contiguous), lse f32 [N, B, H], y [B, H, D] of the states' type,
    lse_out f32 [B, H] (optional); every other stride free."""
    if len(states.shape) != 4:
        raise InvalidProblem(f"states: expected shape (N, B, H, D), got {states.shape}")
    if states.dtype_name is None:
        raise TypeError("merge_states needs the states' dtype: pass an array or a TensorRef "
                        "with dtype")
    element = states.element
    if element not in _STATE_ELEMENTS:
        raise Unsupported(f"states has dtype {states.dtype_name}; merge_states takes float16, "
                          "bfloat16 or float32 states")
    n, b, h, d = states.shape
    if d > 1 and states.stride[3] != 1:
        raise InvalidProblem(f"states: the D axis stride must be 1 (contiguous), "
                             f"got {states.stride[3]}")
    _check_f32("lse", lse, ("N", "B", "H"), (n, b, h))
    _check_rows("y", y, element, (b, h, d), ("B", "H", "D"))
    if lse_out is not None:
        _check_f32("lse_out", lse_out, ("B", "H"), (b, h))
    p = _capi.FdMergeParams.new()
    p.dtype = int(element)
    p.num_states, p.batch_size = as_int32("num_states", n), as_int32("batch_size", b)
    p.num_heads, p.head_dim = as_int32("num_heads", h), as_int32("head_dim", d)
    p.states = states.ptr or None
    p.state_stride_n, p.state_stride_b, p.state_stride_h = (
        as_int64("states stride", s) for s in states.stride[:3])
    p.lse = _capi.float_ptr(lse.ptr)
    p.lse_stride_n, p.lse_stride_b, p.lse_stride_h = (
        as_int64("lse stride", s) for s in lse.stride)
    p.y = y.ptr or None
    p.y_stride_b, p.y_stride_h = (as_int64("y stride", s) for s in y.stride[:2])
    if lse_out is not None:
        p.lse_out = _capi.float_ptr(lse_out.ptr)
        p.lse_out_stride_b, p.lse_out_stride_h = (
            as_int64("lse_out stride", s) for s in lse_out.stride)
    p.stream = stream or None
    return p


def check_merge_states(states: Any, lse: Any, out: Any, lse_out: Any = None) -> None:
    """Host-only (no GPU): returns None when merge_states(states, lse, out=out,
    lse_out=lse_out) would launch, else raises what it would raise."""
    p = merge_params(as_ref(states), as_ref(lse), as_mut(out),
                     None if lse_out is None else as_mut(lse_out))
    _native.check(_native.lib().fd_merge_states_check(ctypes.byref(p)))


def merge_states(states, lse, *, out=None, lse_out=None, return_lse: bool = False,
                 stream: Any = None):
    """Combines N partial results (y_i, lse_i) of the same queries over disjoint key
    sets into the exact result (see the module doc).

    states [N, B, H, D] (f16, bf16 or f32; any strides, D contiguous), lse
    f32 [N, B, H] (natural log). Returns ``out`` [B, H, D] of the states' type
    (allocated like states when None); with ``lse_out`` (f32 [B, H]) or
    ``return_lse=True`` the merged LSE is written too, and ``return_lse`` returns
    (y, lse_out). ``stream`` as for flash_decode. Asynchronous; one C call."""
    from .api import _alloc_like, _default_stream
    from .cuda import stream_handle

    st, lt = as_ref(states), as_ref(lse)
    if len(st.shape) != 4:
        raise InvalidProblem(f"states: expected shape (N, B, H, D), got {st.shape}")
    if stream is None:
        handle = _default_stream([st, lt] + [as_ref(a) for a in (out, lse_out) if a is not None])
    else:
        handle = stream_handle(stream)
    _n, b, h, d = st.shape
    if st.element not in _STATE_ELEMENTS:  # before allocating anything
        merge_params(st, lt, TensorMut(0, (b, h, d)))
    y = out if out is not None else _alloc_like(states, st, (b, h, d), st.element, handle, "out")
    lo = lse_out
    if lo is None and return_lse:
        lo = _alloc_like(states, st, (b, h), ElementKind.F32, handle, "lse_out")
    yt = as_mut(y)
    lot = None if lo is None else as_mut(lo)
    params = merge_params(st, lt, yt, lot, handle)
    for t in (st, lt, yt) + (() if lot is None else (lot,)):
        t.prepare(handle)
    _native.check(_c_merge(params))
    return (y, lo) if return_lse else y
