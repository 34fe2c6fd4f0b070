"""Benchmark shapes: the PERF.md grid, parsing of ``--shape``, byte counting.

Pure Python (no torch): the CPU tests exercise all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ELEM_BYTES = {"bf16": 2, "f16": 2}

# The reference-precision tolerances of PERF.md / the brief: rel. error
# ||out - ref|| / ||ref|| against a float32 reference from the same inputs.
TOLERANCE = {"bf16": 1e-2, "f16": 2e-3}


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


# PERF.md's grid, in its row order: (Hq, Hkv, D, B, K_len).
_PERF_GRID = (
    (32, 8, 128, 1, 8192),     # Llama-3-8B
    (32, 32, 128, 1, 8192),    # MHA
    (64, 8, 128, 1, 32768),
    (32, 8, 128, 16, 4096),
    (32, 8, 128, 64, 2048),
    (32, 8, 128, 128, 1024),
    (32, 32, 128, 32, 2048),   # MHA
    (8, 1, 128, 8, 16384),     # MQA
    (16, 16, 64, 32, 1024),    # D=64
    (32, 8, 128, 1, 512),      # short cache: launch latency
)


def default_grid() -> list[Shape]:
    return [Shape(B=b, Hq=hq, Hkv=hkv, K=k, D=d) for hq, hkv, d, b, k in _PERF_GRID]


# The latency row of the bar: B=1, Hq=32, Hkv=8, K=512, D=128 in <= 5 us.
LATENCY_SHAPE = Shape(B=1, Hq=32, Hkv=8, K=512, D=128)


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


def kv_bytes(shape: Shape, dtype: str) -> int:
    """Bytes of one K cache plus one V cache."""
    return 2 * shape.B * shape.Hkv * shape.K * shape.D * ELEM_BYTES[dtype]


def problem_bytes(shape: Shape, dtype: str) -> int:
    """The fewest bytes a call must move: ``2·B·Hkv·K·D·elem + 2·B·Hq·D·elem``
    (K and V read once, q read once, y written once)."""
    return kv_bytes(shape, dtype) + 2 * shape.B * shape.Hq * shape.D * ELEM_BYTES[dtype]


def floor_us(nbytes: int, gbps: float) -> float:
    """Time to move ``nbytes`` at ``gbps`` (decimal GB/s), in microseconds."""
    if gbps <= 0:
        raise ValueError("bandwidth must be positive")
    return nbytes / (gbps * 1e9) * 1e6


def gbps_of(nbytes: int, us: float) -> float:
    return nbytes / (us * 1e-6) / 1e9


def replica_plan(kv_per_replica: int, touch_bytes: int, budget_bytes: int) -> int:
    """How many KV replicas to rotate through.

    At least ``touch_bytes`` touched in one pass so L2 never holds the cache,
    never fewer than 2 replicas, and at most ``budget_bytes`` of replicas unless
    2 replicas alone exceed it (then 2: one replica is already far larger than L2).
    """
    if kv_per_replica <= 0:
        raise ValueError("kv_per_replica must be positive")
    want = max(2, math.ceil(touch_bytes / kv_per_replica))
    cap = max(2, budget_bytes // kv_per_replica)
    return min(want, cap)


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
