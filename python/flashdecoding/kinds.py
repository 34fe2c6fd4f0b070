"""Small value types of the API: element kinds (the one dtype enum), plan
preferences, backends, operation kinds, KV layouts, precision guarantees and
the kernel SKU."""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Optional

from . import _capi
from .arch import ArchSku, SmArch

_ITEMSIZE = {1: 2, 2: 2, 3: 4, 4: 8, 5: 1, 6: 1}
_NUMPY_NAME = {1: "float16", 2: "bfloat16", 3: "float32", 4: "float64",
               5: "float8_e4m3fn", 6: "float8_e5m2"}
_CUDA_TYPE = {1: "__half", 2: "__nv_bfloat16", 3: "float", 4: "double",
              5: "__nv_fp8_e4m3", 6: "__nv_fp8_e5m2"}


class ElementKind(enum.IntEnum):
    """Element type of a tensor; values are the C ``fd_dtype`` codes.

    q and y are F16 or BF16; k and v the same type as q, or FP8_E4M3 / FP8_E5M2
    (an fp8 KV cache). F32 and F64 exist so they can be refused with
    ``Unsupported`` (merge_states takes F32 states). This is also the dispatch
    key's ``DType``: one enum for both.
    """

    F16 = _capi.FD_DTYPE_F16
    BF16 = _capi.FD_DTYPE_BF16
    F32 = _capi.FD_DTYPE_F32
    F64 = _capi.FD_DTYPE_F64
    FP8_E4M3 = _capi.FD_DTYPE_FP8_E4M3
    FP8_E5M2 = _capi.FD_DTYPE_FP8_E5M2

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[int(self)]

    @property
    def dtype_name(self) -> str:
        """numpy's (and ml_dtypes', torch's) name of the type: 'float16', 'bfloat16',
        'float8_e4m3fn', 'float8_e5m2', ..."""
        return _NUMPY_NAME[int(self)]

    @property
    def short_name(self) -> str:
        return self.name.lower()

    @property
    def is_fp8(self) -> bool:
        return self in (ElementKind.FP8_E4M3, ElementKind.FP8_E5M2)

    @property
    def is_half(self) -> bool:
        """f16 or bf16: the types q and y can have."""
        return self in (ElementKind.F16, ElementKind.BF16)

    @property
    def cuda_type(self) -> str:
        """The CUDA C++ type of one element ('__half', '__nv_fp8_e4m3', ...)."""
        return _CUDA_TYPE[int(self)]

    def numpy_dtype(self):
        """The host numpy dtype (bf16 and fp8 through ``ml_dtypes``)."""
        import numpy as np

        if self is ElementKind.BF16 or self.is_fp8:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, self.dtype_name))
        return np.dtype(self.dtype_name)

    @classmethod
    def parse(cls, value) -> "ElementKind":
        """ElementKind, its name ('bf16', 'F16', 'fp8_e4m3', 'float8_e5m2', ...), a numpy /
        ml_dtypes dtype or a torch dtype."""
        if isinstance(value, ElementKind):
            return value
        kind = element_from_dtype(value)
        if kind is None:
            what = "element kind" if isinstance(value, str) else "ElementKind for dtype"
            raise ValueError(f"unknown {what} {value!r}")
        return kind


_ALIASES = {
    "f16": ElementKind.F16, "float16": ElementKind.F16, "half": ElementKind.F16,
    "bf16": ElementKind.BF16, "bfloat16": ElementKind.BF16,
    "f32": ElementKind.F32, "float32": ElementKind.F32, "float": ElementKind.F32,
    "f64": ElementKind.F64, "float64": ElementKind.F64, "double": ElementKind.F64,
    "fp8_e4m3": ElementKind.FP8_E4M3, "float8_e4m3fn": ElementKind.FP8_E4M3,
    "float8_e4m3": ElementKind.FP8_E4M3, "e4m3": ElementKind.FP8_E4M3,
    "fp8_e5m2": ElementKind.FP8_E5M2, "float8_e5m2": ElementKind.FP8_E5M2,
    "e5m2": ElementKind.FP8_E5M2,
}


def element_from_dtype(dtype) -> Optional[ElementKind]:
    """ElementKind for a name, a numpy dtype / dtype-like or a torch dtype, else None.
    (``float8_e4m3fnuz`` and other fp8 variants are not ours: None.)"""
    if isinstance(dtype, ElementKind):
        return dtype
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None)
    if name is None and isinstance(dtype, type):  # np.float16, ml_dtypes.bfloat16
        try:
            import numpy as np

            name = np.dtype(dtype).name
        except Exception:
            name = None
    if name is None:
        name = str(dtype)
    name = str(name).strip().lower().replace("torch.", "")
    return _ALIASES.get(name)


class PlanPreference(enum.Enum):
    """What a plan optimises for beyond correctness.

    DEFAULT: the fastest plan; results are deterministic for a given problem.
    BATCH_INVARIANT: a sequence's bits do not depend on the batch it is in
    (``FD_FLAG_BATCH_INVARIANT``). The library refuses it with ``Unsupported``
    if it cannot honour it.
    """

    DEFAULT = "default"
    BATCH_INVARIANT = "batch_invariant"

    @property
    def flags(self) -> int:
        return _capi.FD_FLAG_BATCH_INVARIANT if self is PlanPreference.BATCH_INVARIANT else 0


class BackendKind(enum.Enum):
    """Who provides the kernel. This library ships its own CUDA kernels only."""

    BESPOKE = "bespoke"


class OpCategory(enum.Enum):
    """The family of operation a kernel belongs to."""

    ATTENTION = "attention"


class AttentionKind(enum.Enum):
    """Which attention operation: this library's kernels decode (one query token per
    sequence against a KV cache)."""

    DECODE = "decode"


class KvLayout(enum.Enum):
    """How a kernel cell finds key j of a sequence: CONTIGUOUS (strided [B, H_kv, K, D]
    caches) or PAGED (page pools read through a block table, NHD or HND pages)."""

    CONTIGUOUS = "contiguous"
    PAGED = "paged"


class Epilogue(enum.Enum):
    """What a kernel does after the softmax-weighted sum: NONE writes the attention
    output itself (cast to q's type; the LSE too when asked)."""

    NONE = "none"


class MathPrecision(enum.Enum):
    """The precision of a kernel's arithmetic. Ours: F32 (products of f16/bf16/fp8
    inputs are exact in f32; scores, softmax and P.V accumulate in f32)."""

    F32 = "f32"


@dataclass(frozen=True)
class PrecisionGuarantee:
    """What a plan promises about its numbers."""

    math_precision: MathPrecision      # F32
    accumulator: ElementKind           # F32 everywhere
    bit_stable_on_same_hardware: bool  # same inputs, same GPU -> same bits
    deterministic: bool                # no atomics on the output path, fixed order


DECODE_PRECISION = PrecisionGuarantee(math_precision=MathPrecision.F32,
                                      accumulator=ElementKind.F32,
                                      bit_stable_on_same_hardware=True, deterministic=True)


@dataclass(frozen=True)
class KernelSku:
    """One compiled kernel cell of the library (``fd_kernel_cell_info``), in the
    seed's terms.

    ``element`` is the type of q and y; ``aux_element`` the KV type when it differs
    (fp8), else None. An fp8 cell read from the table takes f16 or bf16 queries,
    so its ``element`` is None there; a plan's ``sku()`` names the one it runs.
    """

    index: int
    category: OpCategory
    op: AttentionKind
    element: Optional[ElementKind]
    aux_element: Optional[ElementKind]
    layout: KvLayout
    epilogue: Epilogue
    arch: ArchSku
    backend: BackendKind
    precision_guarantee: PrecisionGuarantee
    head_dim: int           # the bucket; a smaller head_dim runs it with the tail masked
    max_group_per_cta: int  # query heads of one KV head sharing a CTA
    name: str               # canonical template expression, from the library

    @property
    def q_element(self) -> Optional[ElementKind]:
        return self.element

    @property
    def kv_element(self) -> ElementKind:
        """The type k and v are stored in."""
        return self.aux_element if self.aux_element is not None else self.element

    @property
    def paged(self) -> bool:
        return self.layout is KvLayout.PAGED

    @property
    def min_compute_capability(self) -> int:
        return int(self.arch.min_arch)

    def for_queries(self, element: ElementKind) -> "KernelSku":
        """This cell with its query type named (an fp8 cell takes f16 or bf16)."""
        return replace(self, element=ElementKind.parse(element))

    @classmethod
    def from_cell_info(cls, index: int, info, compiled: str) -> "KernelSku":
        """The SKU of the library's ``fd_kernel_cell_info`` number ``index``."""
        kv = ElementKind(info.kv_dtype)
        q = ElementKind(info.q_dtype) if info.q_dtype else None
        return cls(index=index, category=OpCategory.ATTENTION, op=AttentionKind.DECODE,
                   element=q, aux_element=kv if kv.is_fp8 else None,
                   layout=KvLayout.PAGED if info.paged else KvLayout.CONTIGUOUS,
                   epilogue=Epilogue.NONE,
                   arch=ArchSku(min_arch=_arch_at_least(info.min_compute_capability),
                                compiled=compiled),
                   backend=BackendKind.BESPOKE, precision_guarantee=DECODE_PRECISION,
                   head_dim=info.head_dim, max_group_per_cta=info.max_group_per_cta,
                   name=info.name.decode())


def _arch_at_least(cc: int) -> SmArch:
    """The oldest known architecture with compute capability >= cc."""
    for arch in SmArch:
        if int(arch) >= cc:
            return arch
    return max(SmArch)
