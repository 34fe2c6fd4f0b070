"""DispatchKey: the key of the library's kernel table.

A key names a kernel cell: (arch, dtype, head_dim bucket) plus the attention
features a call asks for. It is validated by fixed rules (``validate_fwd``,
``validate_bwd``, ``validate_paged``), hashed stably (``stable_hash``), named
(``kernel_name``), and resolved against the library actually loaded
(``resolve``), which either returns the compiled cell or raises DispatchError
with the reason.

stable_hash
-----------
FNV-1a, 64 bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3, arithmetic
mod 2**64) over the UTF-8 bytes of ``canonical()``::

    fdkey/v1;arch=sm90;dtype=bf16;head_dim=128;causal=0;varlen=0;sliding_window=0;alibi=0;sink=0;paged=0;gqa_ratio=4

Fields in that order, ``name=value`` joined by ';'; arch as ``sm<cc>``, dtype by its
lower-case name, booleans as 0/1, integers in decimal. It depends on nothing but
the key, so it is the same in every process, Python version and platform. The
tests pin vectors; changing the encoding means bumping ``v1``.
"""
from __future__ import annotations

import ctypes
import enum
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from . import _capi
from .errors import DispatchError

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF

HEAD_DIM_BUCKETS = (64, 80, 96, 128, 192, 256)


def fnv1a_64(data: bytes) -> int:
    """FNV-1a 64-bit hash of ``data``."""
    h = FNV64_OFFSET
    for byte in data:
        h ^= byte
        h = (h * FNV64_PRIME) & _MASK64
    return h


class SmArch(enum.IntEnum):
    """GPU architectures by compute capability (major*10 + minor)."""

    SM80 = 80    # A100
    SM86 = 86    # RTX 30xx, A10, A40
    SM87 = 87    # Jetson Orin
    SM89 = 89    # L4, L40, RTX 40xx
    SM90 = 90    # H100, H200
    SM100 = 100  # B200
    SM103 = 103  # B300
    SM120 = 120  # RTX 50xx, RTX PRO 6000
    SM121 = 121  # DGX Spark

    @property
    def cc(self) -> Tuple[int, int]:
        return (int(self) // 10, int(self) % 10)

    @classmethod
    def from_cc(cls, major: int, minor: int = 0) -> "SmArch":
        try:
            return cls(int(major) * 10 + int(minor))
        except ValueError:
            raise DispatchError(f"sm_{major}{minor} is not an architecture this library "
                                f"knows ({', '.join(a.name for a in cls)})") from None


class DType(enum.IntEnum):
    """Element type of a kernel cell; values are the C fd_dtype codes."""

    F16 = _capi.FD_DTYPE_F16
    BF16 = _capi.FD_DTYPE_BF16
    FP8_E4M3 = _capi.FD_DTYPE_FP8_E4M3
    FP8_E5M2 = _capi.FD_DTYPE_FP8_E5M2

    @property
    def is_fp8(self) -> bool:
        return self in (DType.FP8_E4M3, DType.FP8_E5M2)

    @property
    def cuda_type(self) -> str:
        return {DType.F16: "__half", DType.BF16: "__nv_bfloat16",
                DType.FP8_E4M3: "__nv_fp8_e4m3", DType.FP8_E5M2: "__nv_fp8_e5m2"}[self]


_FEATURES = ("causal", "varlen", "sliding_window", "alibi", "sink", "paged")


@dataclass(frozen=True)
class DispatchKey:
    arch: SmArch
    dtype: DType
    head_dim: int
    causal: bool = False
    varlen: bool = False
    sliding_window: bool = False
    alibi: bool = False
    sink: bool = False
    paged: bool = False
    gqa_ratio: int = 1

    # ------------------------------------------------------------------ rules
    def _check_types(self) -> None:
        if not isinstance(self.arch, SmArch):
            raise DispatchError(f"arch must be a SmArch, got {self.arch!r}")
        if not isinstance(self.dtype, DType):
            raise DispatchError(f"dtype must be a DType, got {self.dtype!r}")
        for name in _FEATURES:
            if not isinstance(getattr(self, name), bool):
                raise DispatchError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("head_dim", "gqa_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DispatchError(f"{name} must be an int, got {value!r}")

    def validate_fwd(self) -> None:
        """Rules for any forward (decode) kernel; raises DispatchError with the reason."""
        self._check_types()
        if self.head_dim not in HEAD_DIM_BUCKETS:
            raise DispatchError(f"head_dim {self.head_dim} is not a kernel bucket "
                                f"({', '.join(map(str, HEAD_DIM_BUCKETS))})")
        if self.gqa_ratio < 1:
            raise DispatchError(f"gqa_ratio {self.gqa_ratio} must be >= 1")
        if self.dtype.is_fp8 and self.arch < SmArch.SM89:
            raise DispatchError(f"{self.dtype.name} needs SM89 or newer (fp8 tensor cores); "
                                f"the key is for {self.arch.name}")

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
        """Forward rules for a paged-KV key."""
        self.validate_fwd()
        if not self.paged:
            raise DispatchError("the key is not paged (paged=False)")

    # ------------------------------------------------------------------ names
    def canonical(self) -> str:
        """The canonical text stable_hash() hashes (see the module doc)."""
        self._check_types()
        parts = [f"arch=sm{int(self.arch)}", f"dtype={self.dtype.name.lower()}",
                 f"head_dim={self.head_dim}"]
        parts += [f"{n}={int(getattr(self, n))}" for n in _FEATURES]
        parts.append(f"gqa_ratio={self.gqa_ratio}")
        return "fdkey/v1;" + ";".join(parts)

    def stable_hash(self) -> int:
        """Unsigned 64-bit FNV-1a of canonical() in UTF-8."""
        return fnv1a_64(self.canonical().encode("utf-8"))

    def kernel_name(self) -> str:
        """The template instantiation serving this key, as the library names its cells:
        ``fd::decode_split_kernel<T, HEAD_DIM>``. Arch picks the machine code, not the
        template; features and gqa_ratio are run-time arguments of the same instantiation."""
        self._check_types()
        return f"fd::decode_split_kernel<{self.dtype.cuda_type}, {self.head_dim}>"

    # ------------------------------------------------------------------ library
    def resolve(self):
        """The compiled KernelSku serving this key in the loaded library, or
        DispatchError naming why none does (rules, arch not compiled, no cell, a
        feature the library refuses: the last two in the library's own words)."""
        from . import _native
        from .kinds import ElementKind, KernelSku

        self.validate_fwd()
        lib = _native.lib()
        compiled = compiled_architectures()
        if not arch_runs(self.arch, compiled):
            raise DispatchError(f"this library carries no code that runs on {self.arch.name} "
                                f"(compiled: {lib.fd_compiled_architectures().decode()})")
        index = ctypes.c_int32(-1)
        status = lib.fd_kernel_cell_find(int(self.dtype), self.head_dim, ctypes.byref(index))
        if status != 0:
            raise DispatchError(f"no kernel cell for {self.dtype.name}, head_dim "
                                f"{self.head_dim}: {_native.last_error_message()}", status)
        cell = _capi.FdKernelCell()
        _native.check(lib.fd_kernel_cell_get(index.value, ctypes.byref(cell)))
        if cell.head_dim != self.head_dim:
            raise DispatchError(f"head_dim {self.head_dim} is served by the {cell.head_dim} cell; "
                                f"a key names the bucket itself")
        self._check_features_with_library(lib)
        return KernelSku(index=index.value, element=ElementKind(cell.dtype),
                         head_dim=cell.head_dim, max_group_per_cta=cell.max_group_per_cta,
                         name=cell.name.decode())

    def _check_features_with_library(self, lib) -> None:
        """Asks fd_decode_check about a one-token problem with this key's features,
        with made-up (never dereferenced: the check is host-only) device addresses."""
        from . import _native

        p = _capi.FdDecodeParams.new()
        p.dtype = int(self.dtype)
        p.batch_size, p.num_heads, p.num_kv_heads = 1, self.gqa_ratio, 1
        p.k_len, p.head_dim, p.scale = 1, self.head_dim, 1.0
        base = 1 << 40
        step = 1 << 30
        p.q, p.k, p.v, p.y = base, base + step, base + 2 * step, base + 3 * step
        p.q_stride_h = p.y_stride_h = self.head_dim
        p.q_stride_b = p.y_stride_b = self.head_dim * self.gqa_ratio
        p.k_stride_k = p.v_stride_k = self.head_dim
        p.k_stride_h = p.v_stride_h = p.k_stride_b = p.v_stride_b = self.head_dim
        fake = ctypes.c_void_p(base + 4 * step)
        if self.varlen:
            p.seq_lens = ctypes.cast(fake, ctypes.POINTER(ctypes.c_int32))
        if self.sliding_window:
            p.window_size = 1
        if self.alibi:
            p.alibi_slopes = ctypes.cast(ctypes.c_void_p(base + 5 * step), ctypes.POINTER(ctypes.c_float))
        if self.sink:
            p.sinks = ctypes.cast(ctypes.c_void_p(base + 6 * step), ctypes.POINTER(ctypes.c_float))
        if self.paged:
            p.page_size = 16
            p.block_table = ctypes.cast(ctypes.c_void_p(base + 7 * step), ctypes.POINTER(ctypes.c_int32))
            p.block_table_stride_b = 1
        needed = ctypes.c_size_t(0)
        status = lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(needed))
        if status == 0:
            p.workspace = base + 8 * step if needed.value else None
            p.workspace_bytes = needed.value
            status = lib.fd_decode_check(ctypes.byref(p))
        if status != 0:
            raise DispatchError(f"the library refuses {self.canonical()}: "
                                f"{_native.last_error_message()}", status)


# ---------------------------------------------------------------------- architectures

_ARCH_TOKEN = re.compile(r"(ptx|compute_|sm_)?(\d+)([af]?)", re.I)


def parse_architectures(text: str) -> List[Tuple[int, str, bool]]:
    """'80,86,89,90a+ptx90' -> [(80, '', False), ..., (90, 'a', False), (90, '', True)]:
    (cc, suffix, is_ptx)."""
    out = []
    for m in _ARCH_TOKEN.finditer(text):
        prefix, cc, suffix = m.group(1), int(m.group(2)), m.group(3).lower()
        is_ptx = bool(prefix) and prefix.lower() in ("ptx", "compute_")
        out.append((cc, suffix, is_ptx))
    return out


def compiled_architectures() -> List[Tuple[int, str, bool]]:
    from . import _native

    return parse_architectures(_native.lib().fd_compiled_architectures().decode())


def arch_runs(arch: SmArch, compiled: List[Tuple[int, str, bool]]) -> bool:
    """Whether code compiled for ``compiled`` runs on ``arch``: a cubin sm_XY on the
    same major with minor >= Y ('a'/'f' variants: the exact / same-major family),
    PTX on any newer device."""
    cc = int(arch)
    for target, suffix, is_ptx in compiled:
        if is_ptx:
            if (cc == target) if suffix == "a" else (cc >= target):
                return True
        elif suffix == "a":
            if cc == target:
                return True
        elif cc // 10 == target // 10 and cc % 10 >= target % 10:
            return True
    return False


def highest_compiled_arch() -> Optional[SmArch]:
    """The newest architecture the library has machine code for (None if it names none
    this module knows)."""
    best = None
    for cc, _suffix, _ptx in compiled_architectures():
        try:
            arch = SmArch(cc)
        except ValueError:
            continue
        best = arch if best is None or arch > best else best
    return best
