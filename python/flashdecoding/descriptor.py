"""FlashDecodingDescriptor: the problem, without pointers.

Extents and element types, the softmax scale, and the call's constant features:
the KV cache's type (fp8 with per-tensor scales), a sliding window with
StreamingLLM sink tokens, a logit soft-cap, and the page geometry of a paged
cache. Per-head arrays (ALiBi slopes, sink logits, per-head fp8 scales), the
lengths and the block table are device data: they are arguments
(FlashDecodingArgs / FlashDecodingPagedArgs).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

from .errors import InvalidProblem
from .kinds import ElementKind

INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1
INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1

KV_LAYOUTS = ("NHD", "HND")


def as_int32(name: str, value) -> int:
    """``value`` as a C int32_t, or InvalidProblem (ctypes would silently wrap it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = operator.index(value)  # numpy integers
        except TypeError:
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not INT32_MIN <= value <= INT32_MAX:
        raise InvalidProblem(f"{name}={value} does not fit the C int32_t of the API")
    return int(value)


def as_int64(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    value = operator.index(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidProblem(f"{name}={value} does not fit the C int64_t of the API")
    return int(value)


def _optional_float(name: str, value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a float or None, got bool")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float or None, got {type(value).__name__}") from None


def _positive_finite(name: str, value: Optional[float], none_means: str) -> float:
    """The C value of an optional positive float field (0 = the C default)."""
    if value is None:
        return 0.0
    if not math.isfinite(value) or value <= 0.0:
        raise InvalidProblem(f"{name} = {value!r} must be finite and > 0 (None means {none_means})")
    return value


@dataclass(frozen=True)
class FlashDecodingDescriptor:
    """q [B, H_q, D] and y [B, H_q, D] of ``element`` (f16 or bf16); k and v of
    ``kv_element`` (None: the same as ``element``; or fp8_e4m3 / fp8_e5m2).

    Contiguous caches (``page_size`` 0): k/v [B, H_kv, K_len, D] with any strides.
    Paged caches (``page_size`` > 0): k/v are pools of ``num_pages`` pages of
    ``page_size`` keys, NHD [pages, page_size, H_kv, D] or HND [pages, H_kv,
    page_size, D], read through a block table [B, max_pages]; ``k_len`` is the
    launch's length bound (every sequence's length must be <= it).

    ``window``: attend to the last ``window`` keys of each sequence (None: all);
    ``sink_tokens``: under a window, the first n keys stay attended too
    (StreamingLLM); ``soft_cap``: logits -> cap * tanh(logits / cap) (None: off);
    ``k_scale`` / ``v_scale``: per-tensor fp8 dequantisation scales (None: 1.0).

    Nothing is checked here: ``FlashDecodingPlan.select`` asks the C library.
    """

    batch_size: int
    num_heads: int
    num_kv_heads: int
    k_len: int
    head_dim: int
    scale: float
    element: ElementKind
    kv_element: Optional[ElementKind] = None
    window: Optional[int] = None
    sink_tokens: int = 0
    soft_cap: Optional[float] = None
    k_scale: Optional[float] = None
    v_scale: Optional[float] = None
    page_size: int = 0
    max_pages: int = 0
    num_pages: int = 0

    def __post_init__(self):
        object.__setattr__(self, "element", ElementKind.parse(self.element))
        if self.kv_element is not None:
            object.__setattr__(self, "kv_element", ElementKind.parse(self.kv_element))
        object.__setattr__(self, "scale", float(self.scale))
        for name in ("soft_cap", "k_scale", "v_scale"):
            object.__setattr__(self, name, _optional_float(name, getattr(self, name)))

    # ------------------------------------------------------------------ constructors
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

    @classmethod
    def new_paged(cls, batch_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                  page_size: int, max_pages: int, num_pages: int, element=ElementKind.F16,
                  max_seq_len: Optional[int] = None) -> "FlashDecodingDescriptor":
        """A paged cache: pools of ``num_pages`` pages of ``page_size`` keys, a block
        table of ``max_pages`` entries per sequence; the launch is sized for
        ``max_seq_len`` keys (default max_pages * page_size). Scale 1/sqrt(D)."""
        k_len = max_pages * page_size if max_seq_len is None else max_seq_len
        return cls(batch_size, num_heads, num_kv_heads, k_len, head_dim,
                   cls.default_scale(head_dim), element, page_size=page_size,
                   max_pages=max_pages, num_pages=num_pages)

    def with_scale(self, scale: float) -> "FlashDecodingDescriptor":
        """A new descriptor with another softmax scale."""
        return replace(self, scale=float(scale))

    def with_kv(self, kv_element, k_scale: Optional[float] = None,
                v_scale: Optional[float] = None) -> "FlashDecodingDescriptor":
        """A new descriptor whose KV cache is stored as ``kv_element`` (fp8_e4m3 /
        fp8_e5m2), with per-tensor scales (None: 1.0, or per-head arrays in the args)."""
        return replace(self, kv_element=kv_element, k_scale=k_scale, v_scale=v_scale)

    def with_window(self, window: Optional[int],
                    sink_tokens: int = 0) -> "FlashDecodingDescriptor":
        """A new descriptor attending to the last ``window`` keys (None: all) plus the
        first ``sink_tokens`` keys (StreamingLLM)."""
        return replace(self, window=window, sink_tokens=sink_tokens)

    def with_soft_cap(self, soft_cap: Optional[float]) -> "FlashDecodingDescriptor":
        """A new descriptor with logits soft-capped at ``soft_cap`` (None: off)."""
        return replace(self, soft_cap=soft_cap)

    def with_paging(self, page_size: int, max_pages: int, num_pages: int,
                    max_seq_len: Optional[int] = None) -> "FlashDecodingDescriptor":
        """A new descriptor over a paged cache (see new_paged)."""
        k_len = max_pages * page_size if max_seq_len is None else max_seq_len
        return replace(self, page_size=page_size, max_pages=max_pages, num_pages=num_pages,
                       k_len=k_len)

    # ------------------------------------------------------------------ queries
    @property
    def kv(self) -> ElementKind:
        """The type k and v are stored in."""
        return self.element if self.kv_element is None else self.kv_element

    @property
    def paged(self) -> bool:
        """Whether k and v are page pools (any page field set)."""
        return bool(self.page_size or self.max_pages or self.num_pages)

    def group_size(self) -> int:
        """Query heads per KV head (H_q // H_kv); 0 when num_kv_heads == 0."""
        if self.num_kv_heads == 0:
            return 0
        return self.num_heads // self.num_kv_heads

    def q_shape(self) -> Tuple[int, int, int]:
        return (self.batch_size, self.num_heads, self.head_dim)

    def kv_shape(self, kv_layout: str = "NHD") -> Tuple[int, ...]:
        """Contiguous: [B, H_kv, K_len, D] (``kv_layout`` unused: strides are free).
        Paged: the pool, NHD [pages, page_size, H_kv, D] or HND [pages, H_kv, page_size, D]."""
        if not self.paged:
            return (self.batch_size, self.num_kv_heads, self.k_len, self.head_dim)
        layout = check_kv_layout(kv_layout)
        if layout == "NHD":
            return (self.num_pages, self.page_size, self.num_kv_heads, self.head_dim)
        return (self.num_pages, self.num_kv_heads, self.page_size, self.head_dim)

    def y_shape(self) -> Tuple[int, int, int]:
        return self.q_shape()

    def lse_shape(self) -> Tuple[int, int]:
        return (self.batch_size, self.num_heads)

    def block_table_shape(self) -> Tuple[int, int]:
        return (self.batch_size, self.max_pages)

    def c_args(self) -> Tuple[int, int, int, int, int]:
        """(B, H_q, H_kv, K_len, D) as C int32 values (InvalidProblem if one does not fit)."""
        return (as_int32("batch_size", self.batch_size), as_int32("num_heads", self.num_heads),
                as_int32("num_kv_heads", self.num_kv_heads), as_int32("k_len", self.k_len),
                as_int32("head_dim", self.head_dim))

    def c_fields(self) -> Dict[str, object]:
        """The problem's fd_decode_params fields (no pointers, no strides). Refuses
        with InvalidProblem what C cannot tell from "off": a window of 0, a
        soft-cap or an fp8 scale of 0 (C reads 0 as off / 1.0)."""
        b, h, hkv, k_len, d = self.c_args()
        if self.window is not None:
            window = as_int32("window", self.window)
            if window < 1:
                raise InvalidProblem(f"window = {window} must be None (full attention) or >= 1")
        else:
            window = 0
        return dict(
            dtype=int(self.element), kv_dtype=0 if self.kv_element is None else int(self.kv_element),
            batch_size=b, num_heads=h, num_kv_heads=hkv, k_len=k_len, head_dim=d,
            scale=self.scale, window_size=window,
            sink_tokens=as_int32("sink_tokens", self.sink_tokens),
            logits_soft_cap=_positive_finite("soft_cap", self.soft_cap, "off"),
            k_scale=_positive_finite("k_scale", self.k_scale, "1.0"),
            v_scale=_positive_finite("v_scale", self.v_scale, "1.0"),
            page_size=as_int32("page_size", self.page_size),
            max_pages=as_int32("max_pages", self.max_pages),
            num_pages=as_int32("num_pages", self.num_pages))

    def bytes_moved(self) -> int:
        """Bytes a decode must move at least: 2*B*H_kv*K*D*kv_elem + 2*B*H_q*D*elem
        (K the length bound of a paged cache)."""
        e, ekv = self.element.itemsize, self.kv.itemsize
        return (2 * self.batch_size * self.num_kv_heads * self.k_len * self.head_dim * ekv
                + 2 * self.batch_size * self.num_heads * self.head_dim * e)


def check_kv_layout(kv_layout) -> str:
    """'NHD' or 'HND' (either case), else ValueError naming the value."""
    if isinstance(kv_layout, str) and kv_layout.upper() in KV_LAYOUTS:
        return kv_layout.upper()
    raise ValueError(f"kv_layout = {kv_layout!r} must be 'NHD' [pages, page_size, H_kv, D] "
                     f"or 'HND' [pages, H_kv, page_size, D]")
