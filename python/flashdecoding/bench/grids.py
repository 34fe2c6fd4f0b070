"""The benchmark's grids: the perf grid (ten shapes, the bar's geomean) and the
model zoo (real model shapes in bf16 and f16, then paged, ragged, fp8,
head_dim-256, soft-cap, window and sink rows), and which row each row is compared with.

Pure Python (no torch).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

from .shapes import Case, Shape

PERF = "perf"
ZOO = "zoo"
CUSTOM = "custom"
GRIDS = (PERF, ZOO)
GRID_CHOICES = (PERF, ZOO, "all")
DTYPE_CHOICES = ("bf16", "f16", "both")

# The perf grid, in its row order: (Hq, Hkv, D, B, K_len).
_PERF_GRID = (
    (32, 8, 128, 1, 8192),     # Llama-3-8B, one sequence
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

# The latency row of the bar: B=1, Hq=32, Hkv=8, K=512, D=128.
LATENCY_SHAPE = Shape(B=1, Hq=32, Hkv=8, K=512, D=128)

# Real model shapes, each run in bf16 and f16: (name, Hq, Hkv, D, B, K, extras).
_MODELS = (
    ("Qwen2.5-7B", 28, 4, 128, 1, 32768, {}),
    ("Qwen2.5-7B", 28, 4, 128, 32, 4096, {}),
    ("Llama-3-8B high batch", 32, 8, 128, 256, 512, {}),
    ("Llama-3-8B high batch", 32, 8, 128, 8, 16384, {}),
    ("Llama-3-70B TP8", 8, 1, 128, 32, 8192, {}),
    ("Phi-3-mini", 32, 32, 96, 4, 4096, {}),
    ("Phi-3-mini", 32, 32, 96, 16, 2048, {}),
    ("gpt-oss-20b", 64, 8, 64, 16, 8192, {}),
    ("gpt-oss-20b", 64, 8, 64, 16, 8192, {"window": 128, "sink_logits": True}),
    ("long context", 32, 8, 128, 1, 262144, {}),
    ("long context", 8, 1, 128, 1, 1048576, {}),
    ("ragged batch", 32, 8, 128, 64, 8192, {"ragged": (256, 8192)}),
)

# The paged rows' shapes (each also contiguous, the rows they are compared with).
_PAGED_SHAPES = (Shape(16, 32, 8, 4096, 128), Shape(64, 32, 8, 2048, 128))
PAGE_SIZES = (16, 1)
# A serving engine's table sized for the longest context it admits.
CAPACITY_KEYS = 32768
# fp8 KV rows (e4m3, q in the run's first dtype).
_FP8_SHAPES = (Shape(16, 32, 8, 4096, 128), Shape(1, 32, 8, 32768, 128),
               Shape(64, 32, 8, 2048, 128))
# head_dim 256.
_D256 = (("Gemma-2-9B", Shape(1, 16, 8, 8192, 256)), ("Gemma-2-9B", Shape(16, 16, 8, 4096, 256)),
         ("Gemma-2-9B", Shape(64, 16, 8, 2048, 256)), ("MHA D256", Shape(8, 32, 32, 4096, 256)))
# Gemma-2 caps its attention logits at 50 (cap * tanh(s / cap)), next to the
# same shapes without the cap.
_SOFT_CAPPED = (("Gemma-2-9B", Shape(1, 16, 8, 8192, 256), 50.0),
                ("Gemma-2-9B", Shape(16, 16, 8, 4096, 256), 50.0))
# StreamingLLM: a window and 4 sink tokens, next to the window alone.
_STREAMING_SHAPE = Shape(16, 32, 8, 16384, 128)
STREAMING_WINDOW = 4096
STREAMING_SINK_TOKENS = 4


def ragged_lengths(batch: int, lo: int, hi: int) -> Tuple[int, ...]:
    """``batch`` lengths spread evenly over [lo, hi] (both ends included), in a
    fixed interleaved order so neighbouring sequences differ in length."""
    if batch < 1 or lo < 0 or hi < lo:
        raise ValueError(f"ragged_lengths({batch}, {lo}, {hi})")
    if batch == 1:
        return (hi,)
    spread = [lo + round((hi - lo) * i / (batch - 1)) for i in range(batch)]
    stride = 37
    while math.gcd(stride, batch) != 1:
        stride += 1
    return tuple(spread[(i * stride) % batch] for i in range(batch))


def perf_grid(dtypes: Sequence[str] = ("bf16",)) -> List[Case]:
    return [Case(Shape(B=b, Hq=hq, Hkv=hkv, K=k, D=d), dtype=dt)
            for dt in dtypes for hq, hkv, d, b, k in _PERF_GRID]


def _model_case(name, hq, hkv, d, b, k, extras, dtype) -> Case:
    extras = dict(extras)
    ragged = extras.pop("ragged", None)
    seq_lens = ragged_lengths(b, *ragged) if ragged else ()
    return Case(Shape(B=b, Hq=hq, Hkv=hkv, K=k, D=d), dtype=dtype, seq_lens=seq_lens,
                name=name, **extras)


def zoo_grid(dtypes: Sequence[str] = ("bf16", "f16")) -> List[Case]:
    """The model rows in every dtype of ``dtypes``; the paged, fp8, head_dim-256,
    soft-cap and StreamingLLM rows in the first (the bar's dtype when it is there)."""
    if not dtypes:
        raise ValueError("no dtype")
    rows = [_model_case(*m, dtype=dt) for dt in dtypes for m in _MODELS]
    p = dtypes[0]
    for s in _PAGED_SHAPES:
        base = Case(s, dtype=p, name="Llama-3-8B")
        rows.append(base)
        rows.extend(base.replace(page_size=ps) for ps in PAGE_SIZES)
    ragged = next(c for c in rows if c.ragged and c.dtype == p)
    rows.append(ragged.replace(page_size=16))
    rows.append(ragged.replace(page_size=16, table_keys=CAPACITY_KEYS))
    for s in _FP8_SHAPES:
        base = Case(s, dtype=p, name="Llama-3-8B")
        if base not in rows:
            rows.append(base)
        rows.append(base.replace(kv="e4m3"))
    rows.extend(Case(s, dtype=p, name=n) for n, s in _D256)
    rows.extend(Case(s, dtype=p, name=n, soft_cap=cap) for n, s, cap in _SOFT_CAPPED)
    win = Case(_STREAMING_SHAPE, dtype=p, window=STREAMING_WINDOW, name="StreamingLLM")
    rows.append(win)
    rows.append(win.replace(sink_tokens=STREAMING_SINK_TOKENS))
    return rows


def dtypes_for(grid: str, dtype: Optional[str]) -> Tuple[str, ...]:
    """The dtypes a grid runs in: ``--dtype`` bf16 / f16 / both, or by default
    bf16 for the perf grid and both for the zoo."""
    if dtype == "both":
        return ("bf16", "f16")
    if dtype:
        return (dtype,)
    return ("bf16",) if grid == PERF else ("bf16", "f16")


def select(grid: str, dtype: Optional[str] = None) -> List[Tuple[str, Case]]:
    """(grid name, case) for every row of ``grid`` ("perf", "zoo" or "all")."""
    if grid not in GRID_CHOICES:
        raise ValueError(f"grid {grid!r}: choose from {', '.join(GRID_CHOICES)}")
    out = []
    if grid in (PERF, "all"):
        out += [(PERF, c) for c in perf_grid(dtypes_for(PERF, dtype))]
    if grid in (ZOO, "all"):
        out += [(ZOO, c) for c in zoo_grid(dtypes_for(ZOO, dtype))]
    return out


def custom(shapes: Sequence[Shape], dtype: Optional[str] = None) -> List[Tuple[str, Case]]:
    """``--shape`` rows: plain contiguous cases in bf16 (or the chosen dtypes)."""
    dts = dtypes_for(PERF, dtype)
    return [(CUSTOM, Case(s, dtype=dt)) for dt in dts for s in shapes]


def baseline_of(case: Case) -> Optional[Tuple[Case, str]]:
    """The row this row's time is compared with, and what that comparison is:
    a capacity-sized table with the exact one, a paged cache with the same
    shape contiguous, fp8 with the 16-bit cache, sink tokens with the window
    alone, f16 with bf16.  None for a row compared with nothing."""
    if case.paged and case.table_keys:
        return case.replace(table_keys=0), "exact table"
    if case.paged:
        return case.replace(page_size=0, table_keys=0), "contiguous"
    if case.fp8:
        return case.replace(kv=""), f"{case.dtype} KV"
    if case.sink_tokens:
        return case.replace(sink_tokens=0), "window only"
    if case.soft_cap:
        return case.replace(soft_cap=0.0), "no soft-cap"
    if case.dtype == "f16":
        return case.replace(dtype="bf16"), "bf16"
    return None
