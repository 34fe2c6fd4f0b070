"""Arrays the GPU tests share: random host inputs in an element type, NaN-
poisoned outputs (host or device), bit views for repeat comparisons, and the
tolerance every y is held to."""
from __future__ import annotations

import numpy as np

import flashdecoding as fd

F16, BF16 = fd.ElementKind.F16, fd.ElementKind.BF16
# max |y - ref| / max |ref| against the float64 reference, as everywhere.
TOL = {F16: 2e-3, BF16: 1e-2}


def host(shape, element, rng, scale=1.0):
    """N(0, scale^2) values stored as `element`."""
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(element.numpy_dtype())


def nan_host(shape, element=None):
    """A NaN-filled host array (f32, or `element`)."""
    a = np.full(shape, np.nan, dtype=np.float32)
    return a if element is None else a.astype(element.numpy_dtype())


def nan_buf(shape, element=None):
    """The same in device memory: outputs that show any element left unwritten."""
    from flashdecoding.cuda import DeviceBuffer

    return DeviceBuffer.from_numpy(nan_host(shape, element))


def bits(a):
    """The bytes of an array, for bit-for-bit comparisons."""
    return np.ascontiguousarray(a).view(np.uint8)


def f32(a):
    """An array as the f32 values the GPU gets (for the reference)."""
    return np.asarray(a, np.float32).astype(np.float64)
