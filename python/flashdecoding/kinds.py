"""Small value types of the API: element kinds, plan preferences, backends, SKUs,
precision guarantees."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from . import _capi


class ElementKind(enum.IntEnum):
    """Element type of q, k, v and y. Values are the C ``fd_dtype`` codes.
    The kernels run F16 and BF16; F32 and F64 exist so they can be refused
    with ``Unsupported``."""

    F16 = _capi.FD_DTYPE_F16
    BF16 = _capi.FD_DTYPE_BF16
    F32 = _capi.FD_DTYPE_F32
    F64 = _capi.FD_DTYPE_F64

    @property
    def itemsize(self) -> int:
        return {1: 2, 2: 2, 3: 4, 4: 8}[int(self)]

    @property
    def dtype_name(self) -> str:
        """numpy's name of the type ('float16', 'bfloat16', ...)."""
        return {1: "float16", 2: "bfloat16", 3: "float32", 4: "float64"}[int(self)]

    @property
    def short_name(self) -> str:
        return self.name.lower()

    def numpy_dtype(self):
        """The host numpy dtype (bf16 is ``ml_dtypes.bfloat16``)."""
        import numpy as np

        if self is ElementKind.BF16:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype({ElementKind.F16: "float16", ElementKind.F32: "float32",
                         ElementKind.F64: "float64"}[self])

    @classmethod
    def parse(cls, value) -> "ElementKind":
        """ElementKind, its name ('bf16', 'F16', 'float16', 'bfloat16') or a numpy dtype."""
        if isinstance(value, ElementKind):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            aliases = {"f16": cls.F16, "float16": cls.F16, "half": cls.F16,
                       "bf16": cls.BF16, "bfloat16": cls.BF16,
                       "f32": cls.F32, "float32": cls.F32, "f64": cls.F64, "float64": cls.F64}
            if key in aliases:
                return aliases[key]
            raise ValueError(f"unknown element kind {value!r}")
        kind = element_from_dtype(value)
        if kind is None:
            raise ValueError(f"no ElementKind for dtype {value!r}")
        return kind


def element_from_dtype(dtype) -> Optional[ElementKind]:
    """ElementKind for a numpy dtype / dtype-like / torch dtype, else None."""
    name = getattr(dtype, "name", None)
    if name is None:
        name = str(dtype)
    name = str(name).lower().replace("torch.", "")
    return {"float16": ElementKind.F16, "half": ElementKind.F16, "f16": ElementKind.F16,
            "bfloat16": ElementKind.BF16, "bf16": ElementKind.BF16,
            "f32": ElementKind.F32, "f64": ElementKind.F64,
            "float32": ElementKind.F32, "float": ElementKind.F32,
            "float64": ElementKind.F64, "double": ElementKind.F64}.get(name)


class PlanPreference(enum.Enum):
    """What a plan optimises for beyond correctness.

    DEFAULT: the fastest plan; results are deterministic for a given problem.
    BATCH_INVARIANT: a sequence's bits do not depend on the batch it is in
    (``FD_FLAG_BATCH_INVARIANT``; runs through ``fd_decode``). The library refuses
    it with ``Unsupported`` if it cannot honour it.
    """

    DEFAULT = "default"
    BATCH_INVARIANT = "batch_invariant"

    @property
    def flags(self) -> int:
        return _capi.FD_FLAG_BATCH_INVARIANT if self is PlanPreference.BATCH_INVARIANT else 0


class BackendKind(enum.Enum):
    """Who provides the kernel. This library ships its own CUDA kernels only."""

    BESPOKE = "bespoke"


@dataclass(frozen=True)
class KernelSku:
    """One compiled kernel cell of the library (``fd_kernel_cell``)."""

    index: int
    element: ElementKind
    head_dim: int          # the bucket; a smaller head_dim runs it with the tail masked
    max_group_per_cta: int  # query heads of one KV head sharing a CTA
    name: str              # canonical template expression, from the library


@dataclass(frozen=True)
class PrecisionGuarantee:
    """What a plan promises about its numbers."""

    math_precision: ElementKind        # element type of inputs and output
    accumulator: ElementKind           # f32 everywhere
    bit_stable_on_same_hardware: bool  # same inputs, same GPU -> same bits
    deterministic: bool                # no atomics on the output path, fixed order
