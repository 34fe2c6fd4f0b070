"""Shared fixtures: the library, fake device arrays for host-only checks, GPU skips."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import flashdecoding as fd
from flashdecoding import _native
from flashdecoding.cuda import gpu_status

HAS_GPU, NO_GPU_REASON = gpu_status()

gpu = pytest.mark.skipif(not HAS_GPU, reason=f"needs a CUDA GPU: {NO_GPU_REASON}")

# Made-up device addresses for host-only checks (never dereferenced: every function
# these tests call on them is documented as host-only).
BASE = 1 << 40
REGION = 1 << 34


def addr(i: int) -> int:
    """Start of the i-th disjoint fake region."""
    return BASE + i * REGION


class FakeCudaArray:
    """An object with a CUDA array interface v3 over a fake address (strides in bytes)."""

    def __init__(self, ptr, shape, typestr="<f2", strides=None, readonly=False, stream=None,
                 mask=None):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "typestr": typestr, "data": (ptr, readonly),
            "strides": None if strides is None else tuple(strides), "version": 3,
            "stream": stream, "mask": mask}


def contiguous(shape):
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(out))


def fake_args(desc, typestr=None, shapes=None, strides=None):
    """FlashDecodingArgs over four disjoint fake regions with C-order (or given) layouts."""
    typestr = typestr or ("<f2" if desc.element is fd.ElementKind.F16 else None)
    shapes = shapes or {}
    strides = strides or {}
    default = {"q": desc.q_shape(), "k": desc.kv_shape(), "v": desc.kv_shape(), "y": desc.y_shape()}
    tensors = {}
    for i, name in enumerate("qkvy"):
        shape = shapes.get(name, default[name])
        stride = strides.get(name, contiguous(shape))
        cls = fd.TensorMut if name == "y" else fd.TensorRef
        tensors[name] = cls(addr(i), shape, stride, dtype=desc.element)
        if typestr is not None and typestr != "<f2":
            item = int(typestr[2:])
            tensors[name] = cls(FakeCudaArray(addr(i), shape, typestr,
                                              [s * item for s in stride]))
    return fd.FlashDecodingArgs(tensors["q"], tensors["k"], tensors["v"], tensors["y"])


@pytest.fixture(scope="session")
def lib():
    return _native.lib()


def c_message() -> str:
    return _native.last_error_message()


def run_python(code: str, env=None, timeout=120):
    """Runs ``code`` in a fresh interpreter with this one's sys.path; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if env:
        for key, value in env.items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=timeout)
