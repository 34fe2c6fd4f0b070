"""Benchmark device work with torch: the float32 reference, the relative
error, CUDA-graph timing with CUDA events, torch's copy and reduction rates,
and device facts.

Imports torch at import time: only the measuring path imports this module
(the reference runs on CPU tensors too, which the CPU tests use).
"""

from __future__ import annotations

import contextlib
import gc
import math

import torch

from . import stats as st

TORCH_DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16}
_FP8 = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def torch_kv_dtype(kind: str):
    """The torch dtype of a KV cache of ``kind`` (bf16, f16, e4m3, e5m2)."""
    if kind in TORCH_DTYPE:
        return TORCH_DTYPE[kind]
    dt = getattr(torch, _FP8.get(kind, ""), None)
    if dt is None:
        raise TypeError(f"this torch ({torch.__version__}) has no {kind} dtype")
    return dt


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


def attended_mask(lengths, k_len: int, window: int = 0, sink_tokens: int = 0, device=None):
    """bool [B, K]: key j of sequence b is attended (the rule of shapes.attended_ranges)."""
    from .shapes import attended_ranges

    mask = torch.zeros((len(lengths), k_len), dtype=torch.bool, device=device)
    for b, length in enumerate(lengths):
        for lo, hi in attended_ranges(int(length), window, sink_tokens):
            mask[b, lo:hi] = True
    return mask


def reference(q, k, v, scale: float, *, lengths=None, window: int = 0, sink_tokens: int = 0,
              sink_logits=None, k_scale: float = 1.0, v_scale: float = 1.0,
              soft_cap: float = 0.0, chunk_bytes: int = 1 << 29):
    """float32 decode attention: q [B, Hq, D], k/v [B, Hkv, K, D] (any dtype,
    dequantised as k * k_scale, v * v_scale) -> [B, Hq, D].  ``lengths`` per
    sequence (default K), a window with sink tokens, per-head sink logits
    (which join the softmax denominator only) and a logit soft-cap
    (cap * tanh(s / cap)).  Runs over batch chunks of about
    ``chunk_bytes`` of float32 K/V so long caches fit."""
    B, Hq, D = q.shape
    Hkv, K = k.shape[1], k.shape[2]
    g = Hq // Hkv
    lengths = [K] * B if lengths is None else [int(x) for x in lengths]
    mask = attended_mask(lengths, K, window, sink_tokens, device=q.device)
    per_seq = 2 * Hkv * K * D * 4
    step = max(1, chunk_bytes // max(per_seq, 1))
    sinks = None if sink_logits is None else sink_logits.float().reshape(1, Hkv, g, 1)
    out = torch.empty((B, Hq, D), dtype=torch.float32, device=q.device)
    with exact_f32_matmul():
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            qf = q[b0:b1].float().reshape(b1 - b0, Hkv, g, D)
            kf = k[b0:b1].float() * k_scale
            vf = v[b0:b1].float() * v_scale
            s = torch.matmul(qf, kf.transpose(-1, -2)) * scale          # [b, Hkv, g, K]
            if soft_cap:
                s = soft_cap * torch.tanh(s / soft_cap)
            s = s.masked_fill(~mask[b0:b1, None, None, :], -math.inf)
            m = s.amax(dim=-1, keepdim=True)
            if sinks is not None:
                m = torch.maximum(m, sinks)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = torch.exp(s - m)
            den = p.sum(dim=-1, keepdim=True)
            if sinks is not None:
                den = den + torch.exp(sinks - m)
            o = torch.matmul(p, vf) / torch.where(den > 0, den, torch.ones_like(den))
            out[b0:b1] = o.reshape(b1 - b0, Hq, D)
    return out


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


def torch_rates(nbytes: int, repeats: int, warmup: int) -> dict:
    """torch's reference numbers over ``nbytes`` of bf16: ``src.sum()`` (bytes
    read) and ``dst.copy_(src)`` (bytes read + written), GB/s from the medians."""
    n = nbytes // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    copy = _event_time_us(lambda: dst.copy_(src), repeats, warmup)
    read = _event_time_us(lambda: src.sum(), repeats, warmup)
    real = 2 * n
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes": real,
            "torch_sum_gbps": real / (st.median(read) * 1e-6) / 1e9,
            "torch_copy_gbps": 2 * real / (st.median(copy) * 1e-6) / 1e9,
            "torch_sum_us": read, "torch_copy_us": copy}


def sync():
    torch.cuda.synchronize()


def bits_equal(a, b) -> bool:
    """Same bits (NaN payloads included), for the repeat-determinism check."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return bool(torch.equal(a.contiguous().view(view), b.contiguous().view(view)))


def release_memory():
    """Free what the last method held (its graph, pools, workspace) before the next."""
    gc.collect()
    torch.cuda.empty_cache()


def device_info() -> dict:
    idx = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(idx)
    return {"device": p.name, "sm_count": p.multi_processor_count,
            "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
            "l2_bytes": getattr(p, "L2_cache_size", None)}


def free_bytes() -> int:
    free, _ = torch.cuda.mem_get_info()
    return int(free)
