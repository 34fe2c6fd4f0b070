"""FlashDecodingDescriptor: the problem, without pointers."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Tuple

from .errors import InvalidProblem
from .kinds import ElementKind

INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1
INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1


def as_int32(name: str, value) -> int:
    """``value`` as a C int32_t, or InvalidProblem (ctypes would silently wrap it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import operator

            value = operator.index(value)  # numpy integers
        except TypeError:
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not INT32_MIN <= value <= INT32_MAX:
        raise InvalidProblem(f"{name}={value} does not fit the C int32_t of the API")
    return int(value)


def as_int64(name: str, value) -> int:
    import operator

    value = operator.index(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidProblem(f"{name}={value} does not fit the C int64_t of the API")
    return int(value)


@dataclass(frozen=True)
class FlashDecodingDescriptor:
    """q [B, H_q, D], k/v [B, H_kv, K_len, D], y [B, H_q, D] of one element kind.

    Nothing is checked here: ``FlashDecodingPlan.select`` asks the C library.
    """

    batch_size: int
    num_heads: int
    num_kv_heads: int
    k_len: int
    head_dim: int
    scale: float
    element: ElementKind

    def __post_init__(self):
        object.__setattr__(self, "element", ElementKind.parse(self.element))
        object.__setattr__(self, "scale", float(self.scale))

    @staticmethod
    def default_scale(head_dim: int) -> float:
        """1/sqrt(head_dim) (1.0 for a head_dim the library will refuse anyway)."""
        return 1.0 / math.sqrt(head_dim) if head_dim > 0 else 1.0

    @classmethod
    def new(cls, batch_size: int, num_heads: int, k_len: int, head_dim: int,
            element=ElementKind.F16) -> "FlashDecodingDescriptor":
        """Multi-head attention (H_kv == H_q), scale 1/sqrt(D)."""
        return cls(batch_size, num_heads, num_heads, k_len, head_dim,
                   cls.default_scale(head_dim), element)

    @classmethod
    def new_gqa(cls, batch_size: int, num_heads: int, num_kv_heads: int, k_len: int,
                head_dim: int, element=ElementKind.F16) -> "FlashDecodingDescriptor":
        """Grouped-query (or multi-query, H_kv == 1) attention, scale 1/sqrt(D)."""
        return cls(batch_size, num_heads, num_kv_heads, k_len, head_dim,
                   cls.default_scale(head_dim), element)

    def with_scale(self, scale: float) -> "FlashDecodingDescriptor":
        """A new descriptor with another softmax scale."""
        return replace(self, scale=float(scale))

    def group_size(self) -> int:
        """Query heads per KV head (H_q // H_kv); 0 when num_kv_heads == 0."""
        if self.num_kv_heads == 0:
            return 0
        return self.num_heads // self.num_kv_heads

    def q_shape(self) -> Tuple[int, int, int]:
        return (self.batch_size, self.num_heads, self.head_dim)

    def kv_shape(self) -> Tuple[int, int, int, int]:
        return (self.batch_size, self.num_kv_heads, self.k_len, self.head_dim)

    def y_shape(self) -> Tuple[int, int, int]:
        return self.q_shape()

    def c_args(self) -> Tuple[int, int, int, int, int]:
        """(B, H_q, H_kv, K_len, D) as C int32 values (InvalidProblem if one does not fit)."""
        return (as_int32("batch_size", self.batch_size), as_int32("num_heads", self.num_heads),
                as_int32("num_kv_heads", self.num_kv_heads), as_int32("k_len", self.k_len),
                as_int32("head_dim", self.head_dim))

    def bytes_moved(self) -> int:
        """Bytes a decode must move at least: 2*B*H_kv*K*D*elem + 2*B*H_q*D*elem."""
        e = self.element.itemsize
        return (2 * self.batch_size * self.num_kv_heads * self.k_len * self.head_dim * e
                + 2 * self.batch_size * self.num_heads * self.head_dim * e)
