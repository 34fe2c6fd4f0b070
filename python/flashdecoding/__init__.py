"""flashdecoding: split-K attention decode (seq_q = 1) on NVIDIA GPUs.

A pure-Python ctypes binding over libflashdecoding.so. Importing it needs neither a
GPU nor a driver nor the library: the library is loaded on first use, and the
first call that needs the GPU raises CudaError saying why there is none.

Entry points: ``flash_decode`` (arrays in, arrays out: contiguous or paged
caches, f16/bf16/fp8 KV, every extension), ``merge_states`` (combine partial
results with their LSEs), and the descriptor / args / plan triple
(``FlashDecodingDescriptor``, ``FlashDecodingArgs`` / ``FlashDecodingPagedArgs``,
``FlashDecodingPlan``) for callers that plan once and run many times.
"""
from ._capi import FD_MAX_PAGE_SIZE as MAX_PAGE_SIZE
from ._version import __version__
from .api import flash_decode
from .arch import ArchSku, SmArch
from .decode_args import FlashDecodingArgs, FlashDecodingPagedArgs
from .descriptor import FlashDecodingDescriptor
from .dispatch_key import DispatchKey, DType
from .errors import (CudaError, DispatchError, Error, InvalidPointer, InvalidProblem,
                     LibraryError, Unsupported, WorkspaceTooSmall)
from .kinds import (AttentionKind, BackendKind, ElementKind, Epilogue, KernelSku, KvLayout,
                    MathPrecision, OpCategory, PlanPreference, PrecisionGuarantee)
from .merge import check_merge_states, merge_states
from .plan import FlashDecodingPlan, Workspace
from .tensor import TensorMut, TensorRef

__all__ = [
    "__version__", "flash_decode", "merge_states", "check_merge_states",
    "FlashDecodingDescriptor", "FlashDecodingArgs", "FlashDecodingPagedArgs",
    "FlashDecodingPlan", "Workspace", "TensorRef", "TensorMut",
    "ElementKind", "DType", "PlanPreference", "BackendKind", "KernelSku", "PrecisionGuarantee",
    "OpCategory", "AttentionKind", "ArchSku", "MathPrecision", "KvLayout", "Epilogue",
    "DispatchKey", "SmArch",
    "Error", "InvalidProblem", "InvalidPointer", "Unsupported", "WorkspaceTooSmall",
    "CudaError", "DispatchError", "LibraryError",
    "FLASH_DECODING_MAX_D", "MAX_PAGE_SIZE", "library_version", "library_path",
    "kernel_cells", "head_dim_buckets", "compiled_architectures",
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
    from .arch import compiled_architectures_text

    return compiled_architectures_text()


def kernel_cells():
    """Every compiled kernel cell of the library, as KernelSku (fd_kernel_cell_info_get)."""
    from .cells import kernel_cells as cells

    return cells()


def head_dim_buckets(kv_element=None, paged=None):
    """The head-dim buckets the library has cells for (optionally for one KV element
    type and layout), ascending; any head_dim up to the largest runs the smallest
    bucket that holds it."""
    from .cells import head_dim_buckets as buckets

    return buckets(None if kv_element is None else ElementKind.parse(kv_element), paged)


def __getattr__(name):
    # FLASH_DECODING_MAX_D comes from the library (its largest kernel cell), so it is
    # computed on first access rather than at import.
    if name == "FLASH_DECODING_MAX_D":
        from .cells import max_head_dim

        value = max_head_dim()
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flashdecoding' has no attribute {name!r}")
