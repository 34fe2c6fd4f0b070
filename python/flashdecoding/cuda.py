"""cuda-python glue: streams, events, device buffers (numpy in/out, bf16 and fp8
through ml_dtypes), and 'is there a GPU?'.

cuda-python is imported on first use, so ``import flashdecoding`` works on a
machine without it, without a driver and without a GPU; the first call that
needs the GPU raises ``CudaError`` saying why there is none.
Supported layouts: ``cuda.bindings.runtime`` (cuda-python >= 12.x, 13.x) and the
older ``cuda.cudart``.
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Any, Optional, Sequence, Tuple

from .errors import CudaError
from .kinds import ElementKind, element_from_dtype


# --------------------------------------------------------------------------- runtime

@functools.lru_cache(maxsize=None)
def runtime():
    """The cuda-python runtime module (``cuda.bindings.runtime``)."""
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        try:
            from cuda import cudart as rt  # cuda-python < 12.3 layout
        except ImportError as exc:
            raise CudaError(
                "cuda-python is not installed (pip install cuda-python); it is needed "
                f"for device memory and streams ({exc})") from None
    return rt


def _error_text(rt, err) -> str:
    code = int(err)
    try:
        name = rt.cudaGetErrorName(err)[1].decode()
        text = rt.cudaGetErrorString(err)[1].decode()
        return f"{name} ({code}): {text}"
    except Exception:
        return f"cudaError {code}"


def check(result, what: str):
    """Unpacks a cuda-python result tuple; raises CudaError on a non-zero cudaError_t."""
    rt = runtime()
    if isinstance(result, tuple):
        err, rest = result[0], result[1:]
    else:
        err, rest = result, ()
    if int(err) != 0:
        raise CudaError(f"{what} failed: {_error_text(rt, err)}", int(err))
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def cuda_error_code_from_name(name: str) -> Optional[int]:
    """The cudaError_t value of e.g. 'cudaErrorNoDevice', or None."""
    member = getattr(runtime().cudaError_t, name, None)
    return None if member is None else int(member)


def gpu_status() -> Tuple[bool, str]:
    """(True, '') when a CUDA device can be used, else (False, why not)."""
    try:
        rt = runtime()
    except CudaError as exc:
        return False, str(exc)
    try:
        err, count = rt.cudaGetDeviceCount()
    except Exception as exc:  # a missing libcuda surfaces as an exception in some versions
        return False, f"cudaGetDeviceCount raised {type(exc).__name__}: {exc}"
    if int(err) != 0:
        return False, f"cudaGetDeviceCount failed: {_error_text(rt, err)}"
    if count == 0:
        return False, "the CUDA driver reports 0 devices"
    return True, ""


def has_gpu() -> bool:
    return gpu_status()[0]


def require_gpu() -> None:
    """Raises CudaError('no CUDA GPU: ...') when no device is usable."""
    ok, why = gpu_status()
    if not ok:
        code = None
        try:
            code = int(runtime().cudaGetDeviceCount()[0]) or None
        except Exception:
            pass
        raise CudaError(f"no CUDA GPU available: {why}", code)


def current_device() -> int:
    require_gpu()
    return int(check(runtime().cudaGetDevice(), "cudaGetDevice"))


def device_attribute(attr_name: str, device: Optional[int] = None) -> int:
    rt = runtime()
    dev = current_device() if device is None else device
    attr = getattr(rt.cudaDeviceAttr, attr_name)
    return int(check(rt.cudaDeviceGetAttribute(attr, dev), f"cudaDeviceGetAttribute({attr_name})"))


def compute_capability(device: Optional[int] = None) -> Tuple[int, int]:
    return (device_attribute("cudaDevAttrComputeCapabilityMajor", device),
            device_attribute("cudaDevAttrComputeCapabilityMinor", device))


def device_name(device: Optional[int] = None) -> str:
    rt = runtime()
    dev = current_device() if device is None else device
    prop = check(rt.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(name)


def synchronize() -> None:
    check(runtime().cudaDeviceSynchronize(), "cudaDeviceSynchronize")


# --------------------------------------------------------------------------- streams

def stream_handle(stream: Any) -> int:
    """The cudaStream_t of ``stream`` as an int. Accepts None (0, the legacy default
    stream), an int, our Stream, cuda.core's Stream or anything with
    ``__cuda_stream__``, a torch stream (``.cuda_stream``), a CuPy stream
    (``.ptr``), and cuda-python's cudaStream_t / CUstream."""
    if stream is None:
        return 0
    if isinstance(stream, bool):
        raise TypeError("a stream cannot be a bool")
    if isinstance(stream, int):
        return stream
    if isinstance(stream, Stream):
        return stream.handle
    proto = getattr(stream, "__cuda_stream__", None)
    if proto is not None:
        value = proto() if callable(proto) else proto
        return int(value[1])
    for attr in ("cuda_stream", "ptr", "handle"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return value
    try:
        return int(stream)  # cudaStream_t, CUstream
    except Exception:
        raise TypeError(f"cannot use {type(stream).__name__} as a CUDA stream") from None


def _rt_stream(handle: int):
    return runtime().cudaStream_t(handle)


def _destroy_stream(handle: int) -> None:
    try:
        rt = runtime()
        rt.cudaStreamDestroy(rt.cudaStream_t(handle))
    except Exception:  # interpreter shutdown
        pass


class Stream:
    """A CUDA stream. ``Stream()`` creates a non-blocking stream that this object
    owns (destroyed by ``close()``, the context manager or garbage collection);
    ``Stream.wrap(handle)`` borrows an existing one; ``Stream.legacy()`` is the
    legacy default stream (handle 0)."""

    def __init__(self, *, non_blocking: bool = True, _handle: Optional[int] = None):
        if _handle is not None:
            self._handle = int(_handle)
            self._finalizer = None
            return
        require_gpu()
        rt = runtime()
        flags = rt.cudaStreamNonBlocking if non_blocking else rt.cudaStreamDefault
        s = check(rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        self._handle = int(s)
        self._finalizer = weakref.finalize(self, _destroy_stream, self._handle)

    @classmethod
    def wrap(cls, stream: Any) -> "Stream":
        return cls(_handle=stream_handle(stream))

    @classmethod
    def legacy(cls) -> "Stream":
        return cls(_handle=0)

    @property
    def handle(self) -> int:
        return self._handle

    def __int__(self) -> int:
        return self._handle

    def __cuda_stream__(self):
        return (0, self._handle)

    def synchronize(self) -> None:
        check(runtime().cudaStreamSynchronize(_rt_stream(self._handle)), "cudaStreamSynchronize")

    def wait(self, other: Any) -> None:
        """Work queued on this stream from now on waits for what ``other`` (a stream
        or an Event) has queued so far."""
        if isinstance(other, Event):
            other.wait_on(self)
            return
        ev = Event(timing=False)
        ev.record(other)
        ev.wait_on(self)
        ev.close()

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Stream(handle=0x{self._handle:x})"


def _destroy_event(ev) -> None:
    try:
        runtime().cudaEventDestroy(ev)
    except Exception:
        pass


class Event:
    """A CUDA event (timing enabled by default)."""

    def __init__(self, timing: bool = True):
        require_gpu()
        rt = runtime()
        flags = rt.cudaEventDefault if timing else rt.cudaEventDisableTiming
        self._ev = check(rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        self._finalizer = weakref.finalize(self, _destroy_event, self._ev)

    def record(self, stream: Any = None) -> "Event":
        check(runtime().cudaEventRecord(self._ev, _rt_stream(stream_handle(stream))),
              "cudaEventRecord")
        return self

    def wait_on(self, stream: Any) -> None:
        """Makes ``stream`` wait for this event."""
        check(runtime().cudaStreamWaitEvent(_rt_stream(stream_handle(stream)), self._ev, 0),
              "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        check(runtime().cudaEventSynchronize(self._ev), "cudaEventSynchronize")

    def elapsed_ms(self, end: "Event") -> float:
        """Milliseconds from this event to ``end`` (both recorded and complete)."""
        return float(check(runtime().cudaEventElapsedTime(self._ev, end._ev),
                           "cudaEventElapsedTime"))

    def close(self) -> None:
        self._finalizer()


# --------------------------------------------------------------------------- memory

def _free(ptr: int) -> None:
    try:
        runtime().cudaFree(ptr)
    except Exception:  # interpreter shutdown
        pass


def _np():
    import numpy as np

    return np


def _host_dtype(dtype):
    """numpy dtype from an ElementKind, its name, or anything numpy takes."""
    np = _np()
    if isinstance(dtype, ElementKind):
        return dtype.numpy_dtype()
    if isinstance(dtype, str):  # our names too: 'bf16', 'fp8_e4m3', ...
        kind = element_from_dtype(dtype)
        if kind is not None:
            return kind.numpy_dtype()
    return np.dtype(dtype)


def _contiguous_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    strides = []
    acc = 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


_CAI_TYPESTR = {"float16": "<f2", "float32": "<f4", "float64": "<f8",
                "int8": "|i1", "uint8": "|u1", "int32": "<i4", "int64": "<i8"}


class DeviceBuffer:
    """Device memory owned by this object, with an optional array type (shape,
    dtype) so it can be passed straight to TensorRef/TensorMut and flash_decode.

    Freed by ``free()``, by leaving a ``with`` block, or when garbage collected.
    Allocation is ``cudaMalloc``, or ``cudaMallocAsync`` on ``stream`` when one is
    given (then ``free(stream)`` returns it stream-ordered)."""

    def __init__(self, nbytes: int, *, shape: Optional[Sequence[int]] = None, dtype=None,
                 stream: Any = None):
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        self.nbytes = nbytes
        self.dtype = None if dtype is None else _host_dtype(dtype)
        if shape is None and self.dtype is not None:
            shape = (nbytes // self.dtype.itemsize,)
        self.shape = None if shape is None else tuple(int(n) for n in shape)
        self.ptr = 0
        self._finalizer = None
        if nbytes == 0:
            return
        require_gpu()
        rt = runtime()
        if stream is None:
            ptr = check(rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
        else:
            ptr = check(rt.cudaMallocAsync(nbytes, _rt_stream(stream_handle(stream))),
                        f"cudaMallocAsync({nbytes})")
        self.ptr = int(ptr)
        self._finalizer = weakref.finalize(self, _free, self.ptr)

    # -- constructors
    @classmethod
    def empty(cls, shape: Sequence[int], dtype, *, stream: Any = None) -> "DeviceBuffer":
        dt = _host_dtype(dtype)
        shape = tuple(int(n) for n in shape)
        return cls(math.prod(shape) * dt.itemsize, shape=shape, dtype=dt, stream=stream)

    @classmethod
    def from_numpy(cls, array, *, stream: Any = None) -> "DeviceBuffer":
        """A device copy of a host array (made C-contiguous first); bf16 arrays are
        ``ml_dtypes.bfloat16``. Returns once the copy is complete."""
        np = _np()
        host = np.ascontiguousarray(array)
        buf = cls.empty(host.shape, host.dtype, stream=stream)
        buf.copy_from_numpy(host, stream=stream)
        return buf

    # -- copies
    def copy_from_numpy(self, array, *, stream: Any = None) -> None:
        np = _np()
        host = np.ascontiguousarray(array)
        if host.nbytes != self.nbytes:
            raise ValueError(f"host array has {host.nbytes} bytes, the buffer {self.nbytes}")
        if self.nbytes == 0:
            return
        rt = runtime()
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(rt.cudaMemcpy(self.ptr, host.ctypes.data, host.nbytes, kind), "cudaMemcpy H2D")
        else:
            s = _rt_stream(stream_handle(stream))
            check(rt.cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes, kind, s),
                  "cudaMemcpyAsync H2D")
            check(rt.cudaStreamSynchronize(s), "cudaStreamSynchronize")

    def to_numpy(self, *, stream: Any = None):
        """A host copy with this buffer's shape and dtype (bytes when it has none).
        Waits for ``stream`` (default: the whole device) first."""
        np = _np()
        dtype = self.dtype if self.dtype is not None else np.dtype("uint8")
        shape = self.shape if self.shape is not None else (self.nbytes // dtype.itemsize,)
        out = np.empty(shape, dtype=dtype)
        if self.nbytes == 0:
            return out
        rt = runtime()
        if stream is None:
            synchronize()
        else:
            Stream.wrap(stream).synchronize()
        check(rt.cudaMemcpy(out.ctypes.data, self.ptr, self.nbytes,
                            rt.cudaMemcpyKind.cudaMemcpyDeviceToHost), "cudaMemcpy D2H")
        return out

    def fill_bytes(self, value: int, *, stream: Any = None) -> None:
        """Sets every byte to ``value`` (stream-ordered on ``stream``)."""
        if self.nbytes:
            check(runtime().cudaMemsetAsync(self.ptr, int(value), self.nbytes,
                                            _rt_stream(stream_handle(stream))), "cudaMemsetAsync")

    # -- views
    @property
    def element(self) -> Optional[ElementKind]:
        return None if self.dtype is None else element_from_dtype(self.dtype)

    @property
    def strides(self) -> Optional[Tuple[int, ...]]:
        """Strides in elements (C order)."""
        return None if self.shape is None else _contiguous_strides(self.shape)

    def view(self, shape: Sequence[int], strides: Sequence[int], *, offset: int = 0,
             dtype=None) -> "DeviceView":
        """A strided view into this buffer: shape, strides and offset in elements.
        Raises ValueError when it would reach outside the buffer."""
        dt = _host_dtype(dtype) if dtype is not None else self.dtype
        if dt is None:
            raise ValueError("view() needs a dtype for an untyped buffer")
        return DeviceView(self, shape, strides, offset, dt)

    @property
    def __cuda_array_interface__(self):
        if self.dtype is None or self.dtype.name not in _CAI_TYPESTR:
            raise AttributeError("no CUDA array interface for this dtype")
        return {"shape": self.shape, "typestr": _CAI_TYPESTR[self.dtype.name],
                "data": (self.ptr, False), "strides": None, "version": 3, "stream": None}

    # -- lifetime
    def free(self, stream: Any = None) -> None:
        """Frees now (idempotent). With ``stream``: ``cudaFreeAsync`` on it."""
        if self._finalizer is None or not self._finalizer.alive:
            return
        if stream is None:
            self._finalizer()
        else:
            self._finalizer.detach()
            check(runtime().cudaFreeAsync(self.ptr, _rt_stream(stream_handle(stream))),
                  "cudaFreeAsync")
        self.ptr = 0

    close = free

    @property
    def freed(self) -> bool:
        return self.nbytes > 0 and (self._finalizer is None or not self._finalizer.alive)

    def __enter__(self) -> "DeviceBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    def __repr__(self) -> str:
        return (f"DeviceBuffer(ptr=0x{self.ptr:x}, nbytes={self.nbytes}, shape={self.shape}, "
                f"dtype={None if self.dtype is None else self.dtype.name})")


class DeviceView:
    """A strided window into a DeviceBuffer (keeps it alive). Shape, strides and
    offset are in elements."""

    def __init__(self, base: DeviceBuffer, shape, strides, offset: int, dtype):
        self.base = base
        self.shape = tuple(int(n) for n in shape)
        self.strides = tuple(int(s) for s in strides)
        if len(self.shape) != len(self.strides):
            raise ValueError("shape and strides differ in length")
        self.dtype = _host_dtype(dtype)
        item = self.dtype.itemsize
        lo = hi = int(offset)
        if all(n > 0 for n in self.shape):
            for n, s in zip(self.shape, self.strides):
                (lo, hi) = (lo + (n - 1) * s, hi) if s < 0 else (lo, hi + (n - 1) * s)
            if lo < 0 or (hi + 1) * item > base.nbytes:
                raise ValueError(
                    f"view of shape {self.shape}, strides {self.strides}, offset {offset} "
                    f"reaches outside a buffer of {base.nbytes} bytes")
        self.ptr = base.ptr + int(offset) * item

    @property
    def element(self) -> Optional[ElementKind]:
        return element_from_dtype(self.dtype)

    def to_numpy(self, *, stream: Any = None):
        """Host copy of the viewed elements (copies the buffer, then strides on the host)."""
        np = _np()
        whole = self.base.to_numpy(stream=stream).reshape(-1).view(np.uint8)
        item = self.dtype.itemsize
        if any(n == 0 for n in self.shape):
            return np.empty(self.shape, self.dtype)
        # np.ndarray over the bytes, not as_strided: as_strided rebuilds the dtype from
        # its typestr, which numpy cannot read back for ml_dtypes' float8_e5m2 ('<f1').
        return np.ndarray(self.shape, dtype=self.dtype, buffer=whole,
                          offset=self.ptr - self.base.ptr,
                          strides=[s * item for s in self.strides]).copy()

    def __repr__(self) -> str:
        return f"DeviceView(ptr=0x{self.ptr:x}, shape={self.shape}, strides={self.strides})"
