"""DispatchKey: the key of the library's kernel table.

A key names a kernel cell: (arch, KV element type, head_dim bucket, layout) plus
the attention features a call asks for. It is validated by fixed rules and the
library's cell table (``validate_fwd``, ``validate_bwd``, ``validate_paged``),
hashed stably (``stable_hash``), named (``kernel_name``), and resolved against
the library actually loaded (``resolve``), which either returns the compiled
cell or raises DispatchError with the reason.

Fields
------
``dtype`` is the type the KV cache is stored in: F16 or BF16 (then q and y are
the same type), or FP8_E4M3 / FP8_E5M2 (an fp8 cache; q and y are f16 or bf16,
which the same cell serves). ``sliding_window`` is None (full attention) or the
window size; ``sink`` is the number of StreamingLLM sink tokens kept attended
under the window (0: none); ``paged`` reads page pools through a block table.

stable_hash
-----------
FNV-1a, 64 bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3, arithmetic
mod 2**64) over the UTF-8 bytes of ``canonical()``::

    fdkey/v2;arch=sm90;dtype=bf16;head_dim=128;causal=0;varlen=0;sliding_window=none;alibi=0;sink=0;paged=0;gqa_ratio=4

Fields in that order, ``name=value`` joined by ';'; arch as ``sm<cc>``, dtype by its
lower-case name, booleans as 0/1, integers in decimal, ``sliding_window`` as
``none`` or its size. It depends on nothing but the key, so it is the same in
every process, Python version and platform. The tests pin vectors; changing the
encoding means bumping the version (v1 had boolean sliding_window and sink).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional

from . import _capi
from .arch import (SmArch, arch_runs, compiled_architectures, compiled_architectures_text,
                   highest_compiled_arch, parse_architectures)
from .errors import DispatchError
from .kinds import ElementKind

# The dispatch key's element type is ElementKind itself: one enum for both.
DType = ElementKind

__all__ = ["DispatchKey", "DType", "SmArch", "fnv1a_64", "parse_architectures", "arch_runs",
           "compiled_architectures", "highest_compiled_arch", "head_dim_buckets",
           "CANONICAL_VERSION"]

CANONICAL_VERSION = "fdkey/v2"

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF
_INT32_MAX = 2 ** 31 - 1

# The template element of each KV type in the library's cell names.
_KERNEL_ELEMENT = {ElementKind.F16: "fd::Identity<__half>",
                   ElementKind.BF16: "fd::Identity<__nv_bfloat16>",
                   ElementKind.FP8_E4M3: "fd::Fp8<false>",
                   ElementKind.FP8_E5M2: "fd::Fp8<true>"}


def fnv1a_64(data: bytes) -> int:
    """FNV-1a 64-bit hash of ``data``."""
    h = FNV64_OFFSET
    for byte in data:
        h ^= byte
        h = (h * FNV64_PRIME) & _MASK64
    return h


def head_dim_buckets(dtype: Optional[ElementKind] = None, paged: Optional[bool] = None):
    """The head-dim buckets the loaded library has cells for (optionally for one KV
    type and layout), ascending."""
    from .cells import head_dim_buckets as buckets

    return buckets(dtype, paged)


def __getattr__(name):
    # HEAD_DIM_BUCKETS: every bucket of the loaded library, read on first access
    # (the list is the library's, not written here).
    if name == "HEAD_DIM_BUCKETS":
        value = head_dim_buckets()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_BOOL_FEATURES = ("causal", "varlen", "alibi", "paged")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DispatchKey:
    arch: SmArch
    dtype: ElementKind
    head_dim: int
    causal: bool = False
    varlen: bool = False
    sliding_window: Optional[int] = None
    alibi: bool = False
    sink: int = 0
    paged: bool = False
    gqa_ratio: int = 1

    # ------------------------------------------------------------------ rules
    def _check_types(self) -> None:
        if not isinstance(self.arch, SmArch):
            raise DispatchError(f"arch must be a SmArch, got {self.arch!r}")
        if not isinstance(self.dtype, ElementKind):
            raise DispatchError(f"dtype must be a DType, got {self.dtype!r}")
        for name in _BOOL_FEATURES:
            if not isinstance(getattr(self, name), bool):
                raise DispatchError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.sliding_window is not None and not _is_int(self.sliding_window):
            raise DispatchError(f"sliding_window must be None (full attention) or an int "
                                f"window size, got {self.sliding_window!r}")
        for name in ("head_dim", "gqa_ratio", "sink"):
            value = getattr(self, name)
            if not _is_int(value):
                raise DispatchError(f"{name} must be an int, got {value!r}")

    def _check_values(self) -> None:
        if self.gqa_ratio < 1:
            raise DispatchError(f"gqa_ratio {self.gqa_ratio} must be >= 1")
        w = self.sliding_window
        if w is not None and not 1 <= w <= _INT32_MAX:
            raise DispatchError(f"sliding_window {w} must be >= 1 and <= {_INT32_MAX} "
                                f"(None = full attention)")
        if not 0 <= self.sink <= _INT32_MAX:
            raise DispatchError(f"sink {self.sink} must be >= 0 and <= {_INT32_MAX} "
                                f"(the number of StreamingLLM sink tokens; 0 = none)")
        if self.dtype not in _KERNEL_ELEMENT:
            raise DispatchError(f"{self.dtype.name} has no decode kernel (KV caches are "
                                f"f16, bf16, fp8_e4m3 or fp8_e5m2)")
        if self.dtype.is_fp8 and self.arch < SmArch.SM89:
            raise DispatchError(f"{self.dtype.name} needs SM89 or newer (fp8 conversion "
                                f"instructions); the key is for {self.arch.name}")

    def _check_bucket(self) -> None:
        buckets = head_dim_buckets(self.dtype, self.paged)
        if self.head_dim not in buckets:
            layout = "paged" if self.paged else "contiguous"
            listed = ", ".join(map(str, buckets)) or "none in this build"
            raise DispatchError(f"head_dim {self.head_dim} is not a kernel bucket of "
                                f"{self.dtype.short_name} {layout} cells ({listed})")

    def validate_fwd(self) -> None:
        """Rules for any forward (decode) kernel; raises DispatchError with the reason.
        The head_dim must be a bucket of a cell the loaded library has for this KV
        type and layout."""
        self._check_types()
        self._check_values()
        self._check_bucket()

    def validate_bwd(self) -> None:
        """Forward rules plus those of a backward kernel."""
        self.validate_fwd()
        if self.dtype.is_fp8:
            raise DispatchError(f"{self.dtype.name} has no backward kernels (fp8 is forward-only)")
        if self.paged:
            raise DispatchError("paged KV has no backward kernels (it is an inference layout)")
        if self.head_dim == 256 and self.arch in (SmArch.SM86, SmArch.SM87, SmArch.SM89,
                                                  SmArch.SM120, SmArch.SM121):
            raise DispatchError(f"head_dim 256 backward needs more than the 99 KB of shared "
                                f"memory per block that {self.arch.name} has")

    def validate_paged(self) -> None:
        """Rules for a paged-KV key: paged=True, and the forward rules against the
        library's paged cells."""
        self._check_types()
        if not self.paged:
            raise DispatchError("the key is not paged (paged=False)")
        self.validate_fwd()

    # ------------------------------------------------------------------ names
    def canonical(self) -> str:
        """The canonical text stable_hash() hashes (see the module doc)."""
        self._check_types()
        window = "none" if self.sliding_window is None else str(self.sliding_window)
        parts = [f"arch=sm{int(self.arch)}", f"dtype={self.dtype.name.lower()}",
                 f"head_dim={self.head_dim}", f"causal={int(self.causal)}",
                 f"varlen={int(self.varlen)}", f"sliding_window={window}",
                 f"alibi={int(self.alibi)}", f"sink={self.sink}", f"paged={int(self.paged)}",
                 f"gqa_ratio={self.gqa_ratio}"]
        return CANONICAL_VERSION + ";" + ";".join(parts)

    def stable_hash(self) -> int:
        """Unsigned 64-bit FNV-1a of canonical() in UTF-8."""
        return fnv1a_64(self.canonical().encode("utf-8"))

    def kernel_name(self) -> str:
        """The template instantiation serving this key, as the library names its cells:
        ``fd::decode_kernel<ELEMENT, HEAD_DIM, fd::ContiguousKv | fd::PagedKv>``.
        Arch picks the machine code, not the template; the window, sink tokens, ALiBi,
        lengths and gqa_ratio are run-time arguments of the same instantiation."""
        self._check_types()
        element = _KERNEL_ELEMENT.get(self.dtype)
        if element is None:
            raise DispatchError(f"{self.dtype.name} has no decode kernel")
        source = "fd::PagedKv" if self.paged else "fd::ContiguousKv"
        return f"fd::decode_kernel<{element}, {self.head_dim}, {source}>"

    # ------------------------------------------------------------------ library
    def resolve(self):
        """The compiled KernelSku serving this key in the loaded library, or
        DispatchError naming why none does (rules, arch not compiled, no cell, a
        feature the library refuses: the last two in the library's own words).
        For an fp8 key the SKU's ``element`` is None (the cell takes f16 or bf16 q)."""
        from . import _native
        from .cells import find_cell

        self.validate_fwd()
        compiled = compiled_architectures()
        if not arch_runs(self.arch, compiled):
            raise DispatchError(f"this library carries no code that runs on {self.arch.name} "
                                f"(compiled: {compiled_architectures_text()})")
        sku = find_cell(self.dtype, self.head_dim, self.paged)
        if sku is None:  # validate_fwd read the same table; kept for a clear message
            raise DispatchError(f"no kernel cell for {self.canonical()}", 2)
        if not sku.arch.runs_on(self.arch):
            raise DispatchError(f"{sku.name} needs {sku.arch.min_arch.name} or newer; the key "
                                f"is for {self.arch.name}")
        index = self._ask_library(_native.lib())
        if index != sku.index:
            raise DispatchError(f"the library runs cell {index} for {self.canonical()}, "
                                f"not {sku.index} ({sku.name})")
        return sku

    def _ask_library(self, lib) -> int:
        """fd_decode_check on a one-token problem with this key's features, over
        made-up (never dereferenced: the check is host-only) device addresses;
        returns the cell fd_decode_cell names."""
        from . import _native

        d, g = self.head_dim, self.gqa_ratio
        p = _capi.FdDecodeParams.new()
        p.dtype = int(ElementKind.F16 if self.dtype.is_fp8 else self.dtype)
        p.kv_dtype = int(self.dtype) if self.dtype.is_fp8 else 0
        p.batch_size, p.num_heads, p.num_kv_heads = 1, g, 1
        p.k_len, p.head_dim, p.scale = 1, d, 1.0
        base, step = 1 << 40, 1 << 30
        p.q, p.k, p.v, p.y = base, base + step, base + 2 * step, base + 3 * step
        p.q_stride_h = p.y_stride_h = d
        p.q_stride_b = p.y_stride_b = d * g
        p.k_stride_k = p.v_stride_k = d
        p.k_stride_h = p.v_stride_h = d
        if self.paged:
            p.page_size, p.max_pages, p.num_pages = 16, 1, 1
            p.k_stride_page = p.v_stride_page = 16 * d
            p.block_table = _capi.int32_ptr(base + 7 * step)
            p.block_table_stride_b = 1
        else:
            p.k_stride_b = p.v_stride_b = d
        if self.varlen:
            p.seq_lens = _capi.int32_ptr(base + 4 * step)
        if self.alibi:
            p.alibi_slopes = _capi.float_ptr(base + 5 * step)
        p.window_size = self.sliding_window or 0
        p.sink_tokens = self.sink
        needed = ctypes.c_size_t(0)
        status = lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(needed))
        if status == 0:
            p.workspace = base + 8 * step if needed.value else None
            p.workspace_bytes = needed.value
            status = lib.fd_decode_check(ctypes.byref(p))
        index = ctypes.c_int32(-1)
        if status == 0:
            status = lib.fd_decode_cell(ctypes.byref(p), ctypes.byref(index))
        if status != 0:
            raise DispatchError(f"the library refuses {self.canonical()}: "
                                f"{_native.last_error_message()}", status)
        return index.value
