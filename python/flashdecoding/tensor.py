"""TensorRef / TensorMut: a device pointer with shape, strides (elements) and dtype.

``data`` may be

* an int device address (then ``shape`` is required; ``stride`` defaults to C order;
  ``dtype`` may be left None = "as the descriptor says"),
* a ``DeviceBuffer`` / ``DeviceView`` of ``flashdecoding.cuda``,
* any object with ``__dlpack__`` or ``__cuda_array_interface__`` (CuPy, PyTorch, Numba,
  JAX ...): shape, strides and dtype come from the array. cuda.core's
  ``StridedMemoryView`` reads it when it can (it needs a driver); otherwise the CUDA
  array interface is read directly, and a PyTorch tensor (whose bf16 has no CUDA
  array interface) through ``data_ptr()``/``stride()``.

Streams: at run time (``prepare(stream)``) the producer's pending work is ordered
before the consumer stream: DLPack by passing the stream to ``__dlpack__``, the CUDA
array interface by an event on its ``stream`` entry, PyTorch by an event on its
current stream. Int addresses and our buffers are the caller's to order.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Sequence, Tuple

from .cuda import DeviceBuffer, DeviceView, Event, _contiguous_strides
from .errors import InvalidPointer, InvalidProblem
from .kinds import ElementKind, element_from_dtype

_TYPESTR_NAMES = {"f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8",
                  "u1": "uint8", "i2": "int16", "u2": "uint16", "i4": "int32",
                  "u4": "uint32", "i8": "int64", "u8": "uint64", "b1": "bool"}


def dtype_name_of(dtype: Any) -> str:
    """A dtype's canonical name: ElementKind and its aliases by numpy's name
    ('bf16' -> 'bfloat16', torch.float8_e4m3fn -> 'float8_e4m3fn'), others as numpy
    names them ('int32'), else the text."""
    kind = element_from_dtype(dtype)
    if kind is not None:
        return kind.dtype_name
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None)
    if name is None:
        try:
            import numpy as np

            name = np.dtype(dtype).name
        except Exception:
            name = str(dtype)
    return str(name).lower().replace("torch.", "")


def _strided_memory_view():
    try:
        from cuda.core.utils import StridedMemoryView
    except Exception:
        try:
            from cuda.core.experimental.utils import StridedMemoryView
        except Exception:
            return None
    return StridedMemoryView


def _view_of(obj, stream: Optional[int]):
    """A StridedMemoryView of ``obj``; ``stream`` None: no stream ordering, else the
    consumer stream handle to order the producer's work before."""
    smv = _strided_memory_view()
    make = getattr(smv, "from_any_interface", None)
    if make is not None:  # cuda.core >= 0.5: None means "no synchronisation"
        return make(obj, stream_ptr=None if stream is None else _consumer_token(stream))
    return smv(obj, stream_ptr=-1 if stream is None else _consumer_token(stream))


def _consumer_token(handle: int) -> int:
    """Stream handle as the DLPack/CAI protocols want it: 1 for the legacy default stream."""
    return 1 if handle == 0 else handle


def _is_torch_tensor(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


class TensorRef:
    """A read-only device tensor: ``ptr``, ``shape``, ``stride`` (in elements),
    ``element`` (ElementKind or None) and ``dtype_name``."""

    writable = False

    def __init__(self, data: Any, shape: Optional[Sequence[int]] = None,
                 stride: Optional[Sequence[int]] = None, dtype: Any = None):
        self.data = data
        self._source = "address"
        self._producer_stream: Optional[int] = None
        readonly = False
        if isinstance(data, (TensorRef,)):
            data = data.data
            self.data = data
        if isinstance(data, bool):
            raise TypeError("a tensor address cannot be a bool")
        if isinstance(data, int):
            if shape is None:
                raise TypeError("a TensorRef over an int address needs its shape")
            ptr = data
            a_shape = tuple(int(n) for n in shape)
            a_stride = (tuple(int(s) for s in stride) if stride is not None
                        else _contiguous_strides(a_shape))
            dtype_name = None if dtype is None else dtype_name_of(dtype)
            shape = stride = None  # consumed
        elif isinstance(data, (DeviceBuffer, DeviceView)):
            if isinstance(data, DeviceBuffer) and data.freed:
                raise InvalidPointer("the DeviceBuffer was already freed")
            if data.shape is None or data.dtype is None:
                raise TypeError("an untyped DeviceBuffer needs DeviceBuffer.empty(shape, dtype) "
                                "or .view(...) to be a tensor")
            ptr, a_shape, a_stride = data.ptr, data.shape, data.strides
            dtype_name = data.dtype.name
        else:
            ptr, a_shape, a_stride, dtype_name, readonly = self._from_array(data)
        if len(a_shape) != len(a_stride):
            raise InvalidProblem(f"shape {a_shape} and stride {a_stride} differ in length")
        if shape is not None and tuple(int(n) for n in shape) != a_shape:
            raise InvalidProblem(f"shape {tuple(shape)} given, but the array's shape is {a_shape}")
        if stride is not None and tuple(int(s) for s in stride) != a_stride:
            raise InvalidProblem(
                f"stride {tuple(stride)} given, but the array's strides are {a_stride}")
        if dtype is not None and not isinstance(data, int):
            want = dtype_name_of(dtype)
            if want != dtype_name_of(dtype_name):
                raise InvalidProblem(f"dtype {want} given, but the array is {dtype_name}")
        if self.writable and readonly:
            raise InvalidPointer("the array behind this TensorMut is read-only")
        self.ptr = int(ptr)
        self.shape: Tuple[int, ...] = tuple(a_shape)
        self.stride: Tuple[int, ...] = tuple(a_stride)
        self.dtype_name: Optional[str] = dtype_name
        self.element: Optional[ElementKind] = (None if dtype_name is None
                                                else element_from_dtype(dtype_name))

    # ------------------------------------------------------------------ arrays
    def _from_array(self, obj):
        try:
            import numpy as np

            if isinstance(obj, np.ndarray):
                raise InvalidPointer("a numpy array lives in host memory; copy it to the GPU "
                                     "first (flashdecoding.cuda.DeviceBuffer.from_numpy)")
        except ImportError:
            pass
        has_cai = self._cai_of(obj) is not None
        has_dlpack = hasattr(obj, "__dlpack__")
        if not (has_cai or has_dlpack or _is_torch_tensor(obj)):
            raise TypeError(
                f"cannot use {type(obj).__name__} as a tensor: pass an int device address, a "
                "flashdecoding.cuda.DeviceBuffer, or an object with __cuda_array_interface__ "
                "or __dlpack__")
        smv = _strided_memory_view()
        if smv is not None:
            try:
                view = _view_of(obj, None)
                info = self._from_view(view)
                self._source = "smv"
                if _is_torch_tensor(obj):  # torch's own name (fp8 through DLPack varies)
                    info = info[:3] + (str(obj.dtype).replace("torch.", ""),) + info[4:]
                return info
            except InvalidPointer:
                raise
            except Exception:  # no driver, a dtype it cannot name, ...: read it ourselves
                pass
        if _is_torch_tensor(obj):
            return self._from_torch(obj)
        if has_cai:
            return self._from_cai(obj)
        raise TypeError(f"cannot read {type(obj).__name__} through DLPack without cuda.core "
                        "(pip install cuda-python) and it has no __cuda_array_interface__")

    @staticmethod
    def _cai_of(obj):
        try:
            return getattr(obj, "__cuda_array_interface__", None)
        except Exception:  # torch raises for bf16, for tensors that require grad, ...
            return None

    def _from_view(self, view):
        if not view.is_device_accessible or view.device_id < 0:
            raise InvalidPointer("the array lives in host memory; flashdecoding needs device memory")
        shape = tuple(int(n) for n in view.shape)
        strides = view.strides
        strides = _contiguous_strides(shape) if strides is None else tuple(int(s) for s in strides)
        dtype = view.dtype
        name = getattr(dtype, "name", None) or str(dtype)
        return int(view.ptr), shape, strides, name, bool(view.readonly)

    def _from_cai(self, obj):
        cai = self._cai_of(obj)
        if cai.get("mask") is not None:
            raise InvalidProblem("masked CUDA arrays are not supported")
        shape = tuple(int(n) for n in cai["shape"])
        typestr = cai["typestr"]
        itemsize = int(typestr[2:]) if typestr[2:].isdigit() else 1
        name = _TYPESTR_NAMES.get(typestr[1:], typestr)
        if typestr[0] == ">" and itemsize > 1:
            name = f"big-endian {name}"
        if "descr" in cai and typestr[1] == "V" and cai["descr"] and cai["descr"][0][0]:
            name = str(cai["descr"][0][0])  # a named void field, e.g. 'bfloat16'
        raw = cai.get("strides")
        if raw is None:
            strides = _contiguous_strides(shape)
        else:
            for s in raw:
                if int(s) % itemsize:
                    raise InvalidProblem(
                        f"byte stride {s} is not a multiple of the element size {itemsize}")
            strides = tuple(int(s) // itemsize for s in raw)
        ptr, readonly = cai["data"]
        stream = cai.get("stream")
        if stream is not None:
            self._producer_stream = int(stream)
        self._source = "cai"
        return int(ptr or 0), shape, strides, name, bool(readonly)

    def _from_torch(self, t):
        if t.device.type != "cuda":
            raise InvalidPointer(f"the torch tensor is on {t.device}; flashdecoding needs a CUDA tensor")
        self._source = "torch"
        return (int(t.data_ptr()), tuple(t.shape), tuple(int(s) for s in t.stride()),
                str(t.dtype).replace("torch.", ""), False)

    # ------------------------------------------------------------------ streams
    def prepare(self, stream_handle: int) -> None:
        """Orders the producer's pending writes before work on ``stream_handle``."""
        if self._source == "smv":
            view = _view_of(self.data, stream_handle)
            self._view = view  # keeps a DLPack capsule's memory alive for the call
            if int(view.ptr) != self.ptr:
                raise InvalidPointer("the array moved between planning and running")
        elif self._source == "cai":
            prod = self._producer_stream
            if prod is not None and _consumer_token(prod) != _consumer_token(stream_handle):
                ev = Event(timing=False)
                ev.record(0 if prod == 1 else prod)
                ev.wait_on(stream_handle)
                ev.close()
        elif self._source == "torch":
            import torch

            prod = torch.cuda.current_stream(self.data.device).cuda_stream
            if _consumer_token(prod) != _consumer_token(stream_handle):
                ev = Event(timing=False)
                ev.record(prod)
                ev.wait_on(stream_handle)
                ev.close()

    def producer_stream(self) -> Optional[int]:
        """The stream the array says its producer uses (CUDA array interface / torch), if any."""
        if self._source == "cai":
            cai = self._cai_of(self.data)
            s = None if cai is None else cai.get("stream")
            return None if s is None else int(s)
        if self._source in ("torch", "smv") and _is_torch_tensor(self.data):
            import torch

            return int(torch.cuda.current_stream(self.data.device).cuda_stream)
        if self._source == "smv":
            cai = self._cai_of(self.data)
            s = None if cai is None else cai.get("stream")
            return None if s is None else int(s)
        return None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ptr=0x{self.ptr:x}, shape={self.shape}, "
                f"stride={self.stride}, dtype={self.dtype_name})")


class TensorMut(TensorRef):
    """A writable device tensor (the output ``y``). Refuses read-only arrays."""

    writable = True


def as_ref(obj: Any) -> TensorRef:
    return obj if isinstance(obj, TensorRef) else TensorRef(obj)


def as_mut(obj: Any) -> TensorMut:
    if isinstance(obj, TensorMut):
        return obj
    if isinstance(obj, TensorRef):
        raise TypeError("the output must be a TensorMut, not a TensorRef")
    return TensorMut(obj)
