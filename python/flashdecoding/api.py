"""flash_decode: one call for array users (PyTorch, CuPy, our DeviceBuffers)."""
from __future__ import annotations

import collections
import threading
from typing import Any, Optional

from .descriptor import FlashDecodingDescriptor
from .errors import InvalidProblem, Unsupported
from .kinds import ElementKind
from .plan import FlashDecodingArgs, FlashDecodingPlan, Workspace
from .tensor import TensorRef, as_mut, as_ref

_PLAN_CACHE_SIZE = 128
_plans: "collections.OrderedDict[tuple, FlashDecodingPlan]" = collections.OrderedDict()
_plans_lock = threading.Lock()


def _plan_for(desc: FlashDecodingDescriptor) -> FlashDecodingPlan:
    key = (desc.batch_size, desc.num_heads, desc.num_kv_heads, desc.k_len, desc.head_dim,
           desc.scale, desc.element)
    with _plans_lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
            return plan
    plan = FlashDecodingPlan.select(None, desc)
    with _plans_lock:
        _plans[key] = plan
        while len(_plans) > _PLAN_CACHE_SIZE:
            _plans.popitem(last=False)
    return plan


def plan_cache_info() -> int:
    """Number of cached plans."""
    return len(_plans)


def _alloc_like(q_obj: Any, q: TensorRef, shape, stream_handle: int):
    """An output of ``shape`` and q's dtype, of q's kind (torch, CuPy, or a DeviceBuffer)."""
    module = type(q_obj).__module__.split(".")[0]
    if module == "torch":
        import torch

        return torch.empty(shape, dtype=q_obj.dtype, device=q_obj.device)
    if module == "cupy":
        import cupy

        with cupy.cuda.Device(q_obj.device.id):
            return cupy.empty(shape, dtype=q_obj.dtype)
    from .cuda import DeviceBuffer

    if q.element is None:
        raise TypeError("flash_decode needs `out` when q is a bare address")
    return DeviceBuffer.empty(shape, q.element)


def _default_stream(tensors) -> int:
    """The producers' stream when every array names the same one, else 0 (legacy)."""
    streams = {t.producer_stream() for t in tensors}
    streams.discard(None)
    if len(streams) == 1:
        s = streams.pop()
        return 0 if s == 1 else s  # 1 = the legacy default stream in the protocols
    return 0


def flash_decode(q, k, v, *, scale: Optional[float] = None, out=None, stream: Any = None,
                 workspace: Any = None):
    """y = softmax(scale * q . k^T) . v for one query token per sequence.

    q [B, H_q, D], k and v [B, H_kv, K_len, D], f16 or bf16, on the GPU: PyTorch or
    CuPy tensors, DeviceBuffers/DeviceViews, or TensorRefs. Returns ``out`` (allocated
    like q when None). ``stream`` None runs on the arrays' own stream when they all
    name the same one (PyTorch's current stream, CuPy's), else on the legacy
    default stream; producers' pending work is ordered before the launch. The
    workspace, when none is given and one is needed, is allocated and freed
    stream-ordered (cudaMallocAsync / cudaFreeAsync). Descriptors and plans are
    cached per shape.
    """
    from .cuda import DeviceBuffer, stream_handle

    qt, kt, vt = as_ref(q), as_ref(k), as_ref(v)
    if len(qt.shape) != 3:
        raise InvalidProblem(f"q: expected shape (B, H_q, D), got {qt.shape}")
    if len(kt.shape) != 4:
        raise InvalidProblem(f"k: expected shape (B, H_kv, K_len, D), got {kt.shape}")
    if qt.element is None:
        raise TypeError("flash_decode needs q's dtype: pass an array or a TensorRef with dtype")
    if qt.element not in (ElementKind.F16, ElementKind.BF16):
        raise Unsupported(f"q has dtype {qt.dtype_name}; flash_decode runs float16 and bfloat16")
    b, hq, d = qt.shape
    hkv, k_len = kt.shape[1], kt.shape[2]
    desc = FlashDecodingDescriptor(b, hq, hkv, k_len, d,
                                   FlashDecodingDescriptor.default_scale(d) if scale is None
                                   else float(scale), qt.element)
    plan = _plan_for(desc)
    if stream is None:
        handle = _default_stream([qt, kt, vt] + ([] if out is None else [as_ref(out)]))
    else:
        handle = stream_handle(stream)
    result = out if out is not None else _alloc_like(q, qt, desc.y_shape(), handle)
    args = FlashDecodingArgs(qt, kt, vt, as_mut(result))
    plan.can_implement(args)  # refuse before allocating a workspace
    owned = None
    if workspace is None:
        needed = plan.workspace_size()
        if needed:
            owned = DeviceBuffer(needed, stream=handle)
            ws = Workspace.borrowed(owned)
        else:
            ws = Workspace.none()
    else:
        ws = Workspace.borrowed(workspace)
    try:
        plan.run(handle, ws, args)
    finally:
        if owned is not None:
            owned.free(stream=handle)
    return result
