"""Benchmark device work with torch: the HBM ceiling, the f32 reference, the
relative error, and CUDA-graph timing with CUDA events.

Imports torch at import time: only bench.py's GPU path imports this module.
"""

from __future__ import annotations

import contextlib
import math

import torch

from . import _bench_stats as st

TORCH_DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16}


def _event_time_us(fn, repeats: int, warmup: int) -> list:
    """Per-launch µs of ``fn`` (one large kernel), CUDA events, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        samples.append(e0.elapsed_time(e1) * 1e3)
    return samples


def measure_ceiling(nbytes: int = 1 << 30, repeats: int = 10, warmup: int = 3) -> dict:
    """HBM ceiling in this process.

    copy: ``dst.copy_(src)`` of ``nbytes``, counting bytes read + written.
    read: ``src.sum()`` over the same ``nbytes`` of bf16 (read-only reduction),
    counting bytes read.  Both on random normal data.  GB/s are decimal, from
    the median time; the best sample is kept too.
    """
    n = nbytes // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    copy = _event_time_us(lambda: dst.copy_(src), repeats, warmup)
    read = _event_time_us(lambda: src.sum(), repeats, warmup)
    real = 2 * n
    src = dst = None                     # free the 2 GiB before the shapes
    torch.cuda.empty_cache()
    copy_med, read_med = st.median(copy), st.median(read)
    return {
        "bytes": real,
        "copy_gbps": 2 * real / (copy_med * 1e-6) / 1e9,
        "copy_gbps_best": 2 * real / (min(copy) * 1e-6) / 1e9,
        "read_gbps": real / (read_med * 1e-6) / 1e9,
        "read_gbps_best": real / (min(read) * 1e-6) / 1e9,
        "copy_us": copy, "read_us": read,
        "used": "read",
        "used_note": "floor and % use the read-only reduction (decode is read-dominated)",
    }


@contextlib.contextmanager
def exact_f32_matmul():
    """float32 matmuls in full precision (no TF32) inside the block."""
    m = torch.backends.cuda.matmul
    old = m.allow_tf32
    m.allow_tf32 = False
    try:
        yield
    finally:
        m.allow_tf32 = old


def reference(q, k, v, scale: float):
    """float32 decode attention: q [B, Hq, D], k/v [B, Hkv, K, D] -> [B, Hq, D]."""
    B, Hq, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    with exact_f32_matmul():
        qf = q.float().reshape(B, Hkv, g, D)
        s = torch.matmul(qf, k.float().transpose(-1, -2)) * scale   # [B, Hkv, g, K]
        p = torch.softmax(s, dim=-1)
        o = torch.matmul(p, v.float())                              # [B, Hkv, g, D]
    return o.reshape(B, Hq, D)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float32; inf if out has a NaN/inf."""
    o = out.reshape(ref.shape).float()
    if not bool(torch.isfinite(o).all()):
        return math.inf
    den = torch.linalg.vector_norm(ref).item()
    num = torch.linalg.vector_norm(o - ref).item()
    return num / den if den > 0 else num


def time_graph(calls, n_calls: int, repeats: int, warmup_replays: int = 2) -> list:
    """µs per call: capture ``n_calls`` calls (``calls[j % len(calls)]``, so each
    call reads another KV replica) in one CUDA graph; replay ``warmup_replays``
    times, then time ``repeats`` replays with CUDA events; each sample is
    replay time / n_calls."""
    cur = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(cur)
    with torch.cuda.stream(side):          # warm-up off the capture, as torch advises
        for c in calls[:2]:
            c()
    cur.wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for j in range(n_calls):
            calls[j % len(calls)]()
    for _ in range(warmup_replays):
        graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        e1.synchronize()
        samples.append(e0.elapsed_time(e1) * 1e3 / n_calls)
    del graph
    return samples


def sync():
    torch.cuda.synchronize()


def bits_equal(a, b) -> bool:
    """Same bits (NaN payloads included), for the repeat-determinism check."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return bool(torch.equal(a.contiguous().view(view), b.contiguous().view(view)))


def release_memory():
    torch.cuda.empty_cache()


def device_info() -> dict:
    idx = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(idx)
    info = {"device": p.name, "sm_count": p.multi_processor_count,
            "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
            "l2_bytes": getattr(p, "L2_cache_size", None)}
    return info


def free_bytes() -> int:
    free, _ = torch.cuda.mem_get_info()
    return int(free)
