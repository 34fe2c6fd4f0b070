"""flashdecoding: split-K attention decode (seq_q = 1) on NVIDIA GPUs.

A pure-Python ctypes binding over libflashdecoding.so. Importing it needs neither a
GPU nor a driver nor the library: the library is loaded on first use, and the
first call that needs the GPU raises CudaError saying why there is none.
"""
from ._version import __version__
from .api import flash_decode
from .descriptor import FlashDecodingDescriptor
from .dispatch_key import DispatchKey, DType, SmArch
from .errors import (CudaError, DispatchError, Error, InvalidPointer, InvalidProblem,
                     LibraryError, Unsupported, WorkspaceTooSmall)
from .kinds import (BackendKind, ElementKind, KernelSku, PlanPreference,
                    PrecisionGuarantee)
from .plan import FlashDecodingArgs, FlashDecodingPlan, Workspace
from .tensor import TensorMut, TensorRef

__all__ = [
    "__version__", "flash_decode",
    "FlashDecodingDescriptor", "FlashDecodingArgs", "FlashDecodingPlan", "Workspace",
    "TensorRef", "TensorMut",
    "ElementKind", "PlanPreference", "BackendKind", "KernelSku", "PrecisionGuarantee",
    "DispatchKey", "SmArch", "DType",
    "Error", "InvalidProblem", "InvalidPointer", "Unsupported", "WorkspaceTooSmall",
    "CudaError", "DispatchError", "LibraryError",
    "FLASH_DECODING_MAX_D", "library_version", "library_path", "kernel_cells",
    "compiled_architectures",
]


def library_version() -> str:
    """Version of the loaded libflashdecoding ('MAJOR.MINOR.PATCH')."""
    from . import _native
    from ._version import version_text

    return version_text(_native.lib().fd_get_version())


def library_path() -> str:
    """Path of the loaded libflashdecoding."""
    from . import _native

    return _native.library_path()


def compiled_architectures() -> str:
    """The library's compiled architectures, as it reports them (e.g. '80,86,89,90a')."""
    from . import _native

    return _native.lib().fd_compiled_architectures().decode()


def kernel_cells():
    """Every compiled kernel cell of the library, as KernelSku."""
    import ctypes

    from . import _capi, _native

    lib = _native.lib()
    cells = []
    for i in range(lib.fd_kernel_cell_count()):
        c = _capi.FdKernelCell()
        _native.check(lib.fd_kernel_cell_get(i, ctypes.byref(c)))
        cells.append(KernelSku(index=i, element=ElementKind(c.dtype), head_dim=c.head_dim,
                               max_group_per_cta=c.max_group_per_cta, name=c.name.decode()))
    return cells


def __getattr__(name):
    # FLASH_DECODING_MAX_D comes from the library (its largest kernel cell), so it is
    # computed on first access rather than at import.
    if name == "FLASH_DECODING_MAX_D":
        value = max(c.head_dim for c in kernel_cells())
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flashdecoding' has no attribute {name!r}")
