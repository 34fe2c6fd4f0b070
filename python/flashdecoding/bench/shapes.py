"""Benchmark rows: a decode shape, the case a row measures (dtypes, paged pool,
per-sequence lengths, window, sinks), which keys a call attends, and the bytes
it must move.

Pure Python (no torch): the CPU tests exercise all of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Tuple

# Query / output element types, and the KV cache element types a row may store.
Q_DTYPES = ("bf16", "f16")
FP8_KINDS = ("e4m3", "e5m2")
ELEM_BYTES = {"bf16": 2, "f16": 2, "e4m3": 1, "e5m2": 1}

# The reference-precision tolerances: rel. error ||out - ref|| / ||ref|| against a
# float32 reference from the same (dequantised) inputs; set by the q/y type.
TOLERANCE = {"bf16": 1e-2, "f16": 2e-3}

MAX_PAGE_SIZE = 256


@dataclass(frozen=True)
class Shape:
    """One decode problem: q [B, Hq, D], k/v [B, Hkv, K, D]."""

    B: int
    Hq: int
    Hkv: int
    K: int
    D: int

    def __post_init__(self):
        for name in ("B", "Hq", "Hkv", "K", "D"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name} must be an int, got {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.Hq % self.Hkv:
            raise ValueError(f"Hq={self.Hq} is not a multiple of Hkv={self.Hkv}")

    @property
    def group(self) -> int:
        return self.Hq // self.Hkv

    def label(self) -> str:
        """Short label, e.g. ``32/8 D128 B1 K8192``."""
        return f"{self.Hq}/{self.Hkv} D{self.D} B{self.B} K{self.K}"

    def as_dict(self) -> dict:
        return {"B": self.B, "Hq": self.Hq, "Hkv": self.Hkv, "K": self.K, "D": self.D}


def parse_shape(text: str) -> Shape:
    """Parse ``B,Hq,Hkv,K,D`` (the order of ``--shape``)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if len(parts) != 5 or any(not p for p in parts):
        raise ValueError(f"shape {text!r}: expected B,Hq,Hkv,K,D (five integers)")
    try:
        b, hq, hkv, k, d = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"shape {text!r}: expected B,Hq,Hkv,K,D (five integers)") from None
    return Shape(B=b, Hq=hq, Hkv=hkv, K=k, D=d)


def attended_ranges(length: int, window: int = 0, sink_tokens: int = 0):
    """The key ranges ``[lo, hi)`` a query attends in a sequence of ``length`` keys:
    all of them, or under a window W the last W plus the first ``sink_tokens``
    (StreamingLLM; without a window sink tokens change nothing)."""
    if length <= 0:
        return []
    if window <= 0 or window >= length:
        return [(0, length)]
    ranges = []
    sinks = min(sink_tokens, length - window)
    if sinks > 0:
        ranges.append((0, sinks))
    ranges.append((length - window, length))
    return ranges


def attended_keys(length: int, window: int = 0, sink_tokens: int = 0) -> int:
    return sum(hi - lo for lo, hi in attended_ranges(length, window, sink_tokens))


@dataclass(frozen=True)
class Case:
    """What one benchmark row measures.

    ``shape.K`` is the cache length (the launch's bound); ``seq_lens`` the
    per-sequence lengths (empty: every sequence is K long).  ``kv`` names an fp8
    cache ("e4m3", "e5m2"; empty: the cache has q's type).  ``page_size`` > 0
    stores the cache in a page pool; ``table_keys`` sizes its block table for that
    many keys (0: exactly the longest sequence).  ``name`` is the model the row is
    named after; it is not part of what is measured (:meth:`key`).
    """

    shape: Shape
    dtype: str = "bf16"
    kv: str = ""
    page_size: int = 0
    table_keys: int = 0
    seq_lens: Tuple[int, ...] = ()
    window: int = 0
    sink_tokens: int = 0
    sink_logits: bool = False
    soft_cap: float = 0.0
    name: str = ""

    def __post_init__(self):
        s = self.shape
        if not isinstance(s, Shape):
            raise ValueError(f"shape must be a Shape, got {s!r}")
        if self.dtype not in Q_DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: choose from {', '.join(Q_DTYPES)}")
        if self.kv not in ("",) + FP8_KINDS:
            raise ValueError(f"kv {self.kv!r}: empty or one of {', '.join(FP8_KINDS)}")
        if not 0 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size {self.page_size}: 0 (contiguous) or 1..{MAX_PAGE_SIZE}")
        if self.table_keys and not self.page_size:
            raise ValueError("table_keys sizes a block table: it needs page_size > 0")
        if self.table_keys and self.table_keys < s.K:
            raise ValueError(f"table_keys {self.table_keys} < K {s.K}: the table must hold "
                             "the longest sequence")
        object.__setattr__(self, "seq_lens", tuple(int(x) for x in self.seq_lens))
        if self.seq_lens:
            if len(self.seq_lens) != s.B:
                raise ValueError(f"{len(self.seq_lens)} seq_lens for B={s.B}")
            bad = [x for x in self.seq_lens if not 0 <= x <= s.K]
            if bad:
                raise ValueError(f"seq_lens {bad[:3]} outside [0, K={s.K}]")
        if self.window < 0 or self.sink_tokens < 0:
            raise ValueError("window and sink_tokens must be >= 0")
        if self.sink_tokens and not self.window:
            raise ValueError("sink_tokens only matter under a window")
        if not self.soft_cap >= 0:
            raise ValueError(f"soft_cap {self.soft_cap!r} must be >= 0 (0: none)")

    # ---------------------------------------------------------------- identity
    def key(self) -> "Case":
        """What is measured: the case without its name (rows of two grids that
        measure the same thing are run once)."""
        return dataclasses.replace(self, name="")

    def replace(self, **changes) -> "Case":
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- features
    @property
    def kv_dtype(self) -> str:
        return self.kv or self.dtype

    @property
    def paged(self) -> bool:
        return self.page_size > 0

    @property
    def fp8(self) -> bool:
        return bool(self.kv)

    @property
    def ragged(self) -> bool:
        return bool(self.seq_lens)

    @property
    def plain(self) -> bool:
        """A contiguous 16-bit cache, every sequence K long, full attention."""
        return not (self.paged or self.fp8 or self.ragged or self.window or self.sink_logits
                    or self.soft_cap)

    def lengths(self) -> Tuple[int, ...]:
        return self.seq_lens or (self.shape.K,) * self.shape.B

    def attended(self, length: int) -> int:
        return attended_keys(length, self.window, self.sink_tokens)

    @property
    def max_pages(self) -> int:
        """Width of the block table (paged rows)."""
        if not self.paged:
            return 0
        keys = self.table_keys or max(self.lengths())
        return max(1, -(-keys // self.page_size))

    @property
    def max_seq_len(self) -> int:
        """The launch's length bound: the table's capacity, or the longest sequence."""
        if self.paged and self.table_keys:
            return self.max_pages * self.page_size
        return max(self.lengths()) if self.ragged else self.shape.K

    # ---------------------------------------------------------------- bytes
    def kv_read_bytes(self, elem: Optional[int] = None) -> int:
        """Bytes of K and V a call reads: every attended key of every sequence, in
        the stored element type (fp8: 1 byte) unless ``elem`` says otherwise."""
        s = self.shape
        e = ELEM_BYTES[self.kv_dtype] if elem is None else elem
        keys = sum(self.attended(length) for length in self.lengths())
        return 2 * s.Hkv * s.D * e * keys

    def kv_bytes_16bit(self) -> int:
        """The same keys as a 16-bit cache would hold them (fp8 rows' comparison)."""
        return self.kv_read_bytes(elem=2)

    def qy_bytes(self) -> int:
        s = self.shape
        return 2 * s.B * s.Hq * s.D * ELEM_BYTES[self.dtype]

    def problem_bytes(self) -> int:
        """The fewest bytes a call moves: the attended K and V once, q once, y once.
        Block tables, lengths and sink logits are under 0.2% and not counted."""
        return self.kv_read_bytes() + self.qy_bytes()

    def kv_alloc_bytes(self) -> int:
        """Bytes of one contiguous K cache plus one V cache of [B, Hkv, K, D]."""
        s = self.shape
        return 2 * s.B * s.Hkv * s.K * s.D * ELEM_BYTES[self.kv_dtype]

    # ---------------------------------------------------------------- naming
    def qualifiers(self):
        out = []
        if self.ragged:
            out.append(f"lengths {min(self.seq_lens)}-{max(self.seq_lens)}")
        if self.paged:
            out.append(f"paged P{self.page_size}")
            if self.table_keys:
                out.append(f"table {_keys_text(self.table_keys)}")
        if self.fp8:
            out.append(f"fp8 {self.kv}")
        if self.window:
            out.append(f"window {self.window}")
        if self.sink_tokens:
            out.append(f"+ {self.sink_tokens} sink tokens")
        if self.sink_logits:
            out.append("+ sink logits")
        if self.soft_cap:
            out.append(f"soft-cap {self.soft_cap:g}")
        return out

    def label(self) -> str:
        """e.g. ``Qwen2.5-7B 28/4 D128 B1 K32768 bf16``,
        ``Llama-3-8B 32/8 D128 B16 K4096 paged P16 bf16``."""
        parts = ([self.name] if self.name else []) + [self.shape.label()] + self.qualifiers()
        parts.append(self.dtype if not self.fp8 else f"q {self.dtype}")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return {"name": self.name, **self.shape.as_dict(), "dtype": self.dtype,
                "kv_dtype": self.kv_dtype, "page_size": self.page_size,
                "max_pages": self.max_pages, "max_seq_len": self.max_seq_len,
                "seq_lens": list(self.seq_lens) or None, "window": self.window,
                "sink_tokens": self.sink_tokens, "sink_logits": self.sink_logits,
                "soft_cap": self.soft_cap}


def _keys_text(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


# ------------------------------------------------------------------ time, replicas

def floor_us(nbytes: int, gbps: float) -> float:
    """Time to move ``nbytes`` at ``gbps`` (decimal GB/s), in microseconds."""
    if gbps <= 0:
        raise ValueError("bandwidth must be positive")
    return nbytes / (gbps * 1e9) * 1e6


def gbps_of(nbytes: int, us: float) -> float:
    if us <= 0:
        raise ValueError("time must be positive")
    return nbytes / (us * 1e-6) / 1e9


def replica_plan(read_per_replica: int, touch_bytes: int, budget_bytes: int,
                 alloc_per_replica: Optional[int] = None) -> int:
    """How many KV replicas to rotate through.

    At least ``touch_bytes`` read in one pass so L2 never holds the cache, never
    fewer than 2 replicas, and at most ``budget_bytes`` allocated unless 2
    replicas alone exceed it (then 2: one replica is already far larger than L2).
    ``alloc_per_replica`` defaults to ``read_per_replica``.
    """
    if read_per_replica <= 0:
        raise ValueError("read_per_replica must be positive")
    alloc = read_per_replica if alloc_per_replica is None else alloc_per_replica
    if alloc <= 0:
        raise ValueError("alloc_per_replica must be positive")
    want = max(2, math.ceil(touch_bytes / read_per_replica))
    cap = max(2, budget_bytes // alloc)
    return min(want, cap)


def replica_shift(case: Case) -> int:
    """Keys between consecutive replicas of a window row: the most keys a
    sequence attends, rounded up to 16.  0 for rows that read whole caches,
    whose replicas are disjoint copies."""
    if not case.window:
        return 0
    most = max(case.attended(length) for length in case.lengths())
    return -(-most // 16) * 16


def replica_alloc_bytes(case: Case, replicas: int) -> int:
    """Bytes the K and V replicas of ``case`` occupy: R disjoint caches, or for
    window rows one buffer of K + (R - 1) * shift keys that the replicas view."""
    s = case.shape
    shift = replica_shift(case)
    keys = s.K + (replicas - 1) * shift if shift else replicas * s.K
    return case.kv_alloc_bytes() // s.K * keys


def replicas_for(case: Case, touch_bytes: int, budget_bytes: int) -> int:
    """Replicas of ``case``: :func:`replica_plan` on the bytes a call reads and
    the bytes the replicas occupy."""
    if not replica_shift(case):
        return replica_plan(case.kv_read_bytes(), touch_bytes, budget_bytes,
                            alloc_per_replica=case.kv_alloc_bytes())
    r = max(2, math.ceil(touch_bytes / case.kv_read_bytes()))
    while r > 2 and replica_alloc_bytes(case, r) > budget_bytes:
        r -= 1
    return r


def calls_per_graph(replicas: int, floor: float, min_calls: int = 16,
                    target_us: float = 1000.0, max_calls: int = 2048) -> int:
    """Calls captured in one CUDA graph: a whole number of passes over the
    replicas, at least ``min_calls``, and enough that one replay lasts about
    ``target_us`` (by the floor) so event resolution is negligible."""
    per_call = max(floor, 2.0)
    n = max(min_calls, math.ceil(target_us / per_call))
    n = min(n, max(max_calls, replicas))
    passes = max(1, math.ceil(n / replicas))
    return passes * replicas
