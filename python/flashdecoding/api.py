"""flash_decode: one call for array users (PyTorch, CuPy, our DeviceBuffers)."""
from __future__ import annotations

import collections
import contextlib
import numbers
import threading
from typing import Any, Optional, Tuple

from .decode_args import FlashDecodingArgs, FlashDecodingPagedArgs, check_args
from .descriptor import FlashDecodingDescriptor, check_kv_layout
from .errors import InvalidProblem, Unsupported
from .kinds import ElementKind, PlanPreference
from .plan import FlashDecodingPlan, Workspace
from .tensor import TensorRef, as_mut, as_ref

# Plans of flash_decode and of the torch ops, one cache per process: a model with
# many layers of a few shapes fits; an LRU beyond that.
_PLAN_CACHE_SIZE = 256
_plans: "collections.OrderedDict[tuple, FlashDecodingPlan]" = collections.OrderedDict()
_plans_lock = threading.Lock()


def plan_for(desc: FlashDecodingDescriptor, pref: PlanPreference) -> FlashDecodingPlan:
    """The plan of ``desc`` (checked by the library, host only), cached per problem."""
    key = (desc, pref)
    with _plans_lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
            return plan
    plan = FlashDecodingPlan.select(None, desc, pref)
    with _plans_lock:
        _plans[key] = plan
        while len(_plans) > _PLAN_CACHE_SIZE:
            _plans.popitem(last=False)
    return plan


def plan_cache_info() -> int:
    """Number of cached plans."""
    return len(_plans)


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


@contextlib.contextmanager
def _torch_allocating_on(device, handle: int):
    """PyTorch's allocator bound to stream ``handle`` (so a tensor made here is
    stream-ordered with the launch), or its current stream when that is ``handle``."""
    import torch

    current = torch.cuda.current_stream(device)
    if current.cuda_stream == handle:
        yield
        return
    with torch.cuda.stream(torch.cuda.ExternalStream(handle, device=device)):
        yield


def _alloc_like(like_obj: Any, like: TensorRef, shape, element: ElementKind, handle: int,
                what: str):
    """A new array of ``shape`` and ``element``, of ``like_obj``'s kind (torch, CuPy,
    or a DeviceBuffer)."""
    module = _module_of(like_obj)
    if module == "torch":
        import torch

        dtype = getattr(torch, element.dtype_name)
        with _torch_allocating_on(like_obj.device, handle):
            return torch.empty(shape, dtype=dtype, device=like_obj.device)
    if module == "cupy":
        import cupy

        with cupy.cuda.Device(like_obj.device.id):
            return cupy.empty(shape, dtype=element.numpy_dtype())
    from .cuda import DeviceBuffer

    if like.dtype_name is None:
        raise TypeError(f"flash_decode needs `{what}` when q is a bare address")
    return DeviceBuffer.empty(shape, element)


def _default_stream(tensors) -> int:
    """The producers' stream when every array names the same one, else 0 (legacy)."""
    streams = {t.producer_stream() for t in tensors}
    streams.discard(None)
    if len(streams) == 1:
        s = streams.pop()
        return 0 if s == 1 else s  # 1 = the legacy default stream in the protocols
    return 0


def _split_scale(name: str, value: Any) -> Tuple[Optional[float], Any]:
    """(per-tensor float, per-head array) of a k_scale / v_scale argument."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a float or an f32 [H_kv] device array, got bool")
    if isinstance(value, numbers.Real):
        return float(value), None
    return None, value


def _pool_geometry(kt: TensorRef, layout: str) -> Tuple[int, int, int]:
    """(num_pages, page_size, H_kv) of a pool by layout."""
    pages, a, b, _d = kt.shape
    return (pages, a, b) if layout == "NHD" else (pages, b, a)


def flash_decode(q, k, v, *, scale: Optional[float] = None, out=None, lse=None,
                 stream: Any = None, workspace: Any = None, seq_lens=None,
                 window: Optional[int] = None, sink_tokens: int = 0, sink_logits=None,
                 alibi_slopes=None, soft_cap: Optional[float] = None,
                 batch_invariant: bool = False, return_lse: bool = False, block_table=None,
                 kv_layout: str = "NHD", max_seq_len: Optional[int] = None,
                 k_scale=None, v_scale=None):
    """y = softmax(scale * q . k^T) . v for one query token per sequence.

    q [B, H_q, D] (f16 or bf16) on the GPU; k and v [B, H_kv, K_len, D] with any
    strides, of q's type or fp8 (``float8_e4m3fn`` / ``float8_e5m2``, dequantised
    as k * k_scale, v * v_scale). With ``block_table`` (int32 [B, max_pages]) k and v
    are page pools: ``kv_layout`` "NHD" [pages, page_size, H_kv, D] or "HND"
    [pages, H_kv, page_size, D]; the page size is read from the pool's shape and
    ``max_seq_len`` (default max_pages * page_size) bounds every length.

    Arrays: PyTorch or CuPy tensors, DeviceBuffers/DeviceViews, or TensorRefs.
    Options: ``seq_lens`` int32 [B] per-sequence lengths; ``window`` attends to the
    last ``window`` keys and ``sink_tokens`` keeps the first n attended under it
    (StreamingLLM); ``sink_logits`` f32 [H_q] per-head sink logits (gpt-oss: they
    join the softmax denominator only); ``alibi_slopes`` f32 [H_q]; ``soft_cap``
    (logits -> cap * tanh(logits / cap)); ``k_scale`` / ``v_scale`` a float or an
    f32 [H_kv] array; ``batch_invariant`` makes a sequence's bits independent of
    its batch. ``lse`` (f32 [B, H_q], preallocated) or ``return_lse=True`` computes
    the natural-log sum of the softmax weights; ``return_lse`` returns (y, lse).

    Returns ``out`` (allocated like q when None). ``stream`` None runs on the
    arrays' own stream when they all name the same one (PyTorch's current stream,
    CuPy's), else on the legacy default stream; producers' pending work is ordered
    before the launch. One C call (fd_decode) per call, which checks it once.
    Without ``workspace`` one is allocated when needed: with PyTorch's allocator
    for torch inputs, else stream-ordered (cudaMallocAsync / cudaFreeAsync).
    Descriptors and plans are cached per problem.
    """
    from .cuda import DeviceBuffer, stream_handle

    qt, kt, vt = as_ref(q), as_ref(k), as_ref(v)
    paged = block_table is not None
    if len(qt.shape) != 3:
        raise InvalidProblem(f"q: expected shape (B, H_q, D), got {qt.shape}")
    for name, t in (("k", kt), ("v", vt)):
        if len(t.shape) != 4:
            want = ("(pages, page_size, H_kv, D) or (pages, H_kv, page_size, D)" if paged
                    else "(B, H_kv, K_len, D)")
            raise InvalidProblem(f"{name}: expected shape {want}, got {t.shape}")
    if qt.element is None:
        raise TypeError("flash_decode needs q's dtype: pass an array or a TensorRef with dtype")
    if not qt.element.is_half:
        raise Unsupported(f"q has dtype {qt.dtype_name}; flash_decode runs float16 and bfloat16")
    b, hq, d = qt.shape
    kv_kind = kt.element
    kv_element = kv_kind if kv_kind is not None and kv_kind.is_fp8 else None
    if kv_kind is not None and kv_kind.is_half and kv_kind is not qt.element:
        kv_element = kv_kind  # the library names the mismatch
    if paged:
        bt = as_ref(block_table)
        layout = check_kv_layout(kv_layout)
        if len(bt.shape) != 2:
            raise InvalidProblem(f"block_table: expected int32 [B, max_pages], got "
                                 f"{bt.dtype_name or 'an untyped array'} {bt.shape}")
        num_pages, page_size, hkv = _pool_geometry(kt, layout)
        max_pages = bt.shape[1]
        k_len = max_pages * page_size if max_seq_len is None else max_seq_len
    else:
        if check_kv_layout(kv_layout) != "NHD":
            raise InvalidProblem(f"kv_layout = {kv_layout!r} applies to page pools (block_table); "
                                 "a contiguous cache is [B, H_kv, K_len, D] with any strides")
        if max_seq_len is not None:
            raise InvalidProblem("max_seq_len applies to page pools (block_table); a contiguous "
                                 "cache's length is k.shape[2]")
        num_pages = page_size = max_pages = 0
        hkv, k_len = kt.shape[1], kt.shape[2]
    k_scale_f, k_scales = _split_scale("k_scale", k_scale)
    v_scale_f, v_scales = _split_scale("v_scale", v_scale)
    desc = FlashDecodingDescriptor(
        b, hq, hkv, k_len, d,
        FlashDecodingDescriptor.default_scale(d) if scale is None else float(scale),
        qt.element, kv_element=kv_element, window=window, sink_tokens=sink_tokens,
        soft_cap=soft_cap, k_scale=k_scale_f, v_scale=v_scale_f, page_size=page_size,
        max_pages=max_pages, num_pages=num_pages)
    pref = PlanPreference.BATCH_INVARIANT if batch_invariant else PlanPreference.DEFAULT
    plan = plan_for(desc, pref)

    # Each array is wrapped once: these refs serve the stream choice and the call.
    extras = {name: None if a is None else as_ref(a)
              for name, a in (("seq_lens", seq_lens), ("sink_logits", sink_logits),
                              ("alibi_slopes", alibi_slopes), ("k_scales", k_scales),
                              ("v_scales", v_scales))}
    out_ref = None if out is None else as_mut(out)
    lse_ref = None if lse is None else as_mut(lse)
    if stream is None:
        given = [qt, kt, vt] + [t for t in (out_ref, lse_ref, bt if paged else None,
                                            *extras.values()) if t is not None]
        handle = _default_stream(given)
    else:
        handle = stream_handle(stream)
    like = qt.data if isinstance(q, TensorRef) else q
    result = out if out is not None else _alloc_like(like, qt, desc.y_shape(), qt.element,
                                                     handle, "out")
    if out_ref is None:
        out_ref = as_mut(result)
    lse_arr = lse
    if lse is None and return_lse:
        lse_arr = _alloc_like(like, qt, desc.lse_shape(), ElementKind.F32, handle, "lse")
        lse_ref = as_mut(lse_arr)
    if paged:
        args: FlashDecodingArgs = FlashDecodingPagedArgs(qt, kt, vt, out_ref, bt,
                                                         kv_layout=layout, lse=lse_ref,
                                                         **extras)
    else:
        args = FlashDecodingArgs(qt, kt, vt, out_ref, lse=lse_ref, **extras)
    check_args(desc, args)  # Python's checks, before a workspace is allocated
    owned = None
    if workspace is not None:
        ws = Workspace.borrowed(workspace)
    elif plan.workspace_size() == 0:
        ws = Workspace.none()
    elif _module_of(like) == "torch":
        import torch

        with _torch_allocating_on(like.device, handle):
            owned_tensor = torch.empty(plan.workspace_size(), dtype=torch.uint8,
                                       device=like.device)
        ws = Workspace(owned_tensor.data_ptr(), plan.workspace_size(), owned_tensor)
    else:
        owned = DeviceBuffer(plan.workspace_size(), stream=handle)
        ws = Workspace.borrowed(owned)
    try:
        plan._launch(handle, ws, args)
    finally:
        if owned is not None:
            owned.free(stream=handle)
    return (result, lse_arr) if return_lse else result
