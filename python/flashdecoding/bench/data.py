"""Inputs of one benchmark row on the GPU: q, R replicas of the KV cache, the
per-sequence lengths, sink logits, fp8 scales, and the page pools built from
the same replicas (flashdecoding's paged rows and FlashInfer read them).

Every replica holds different random data, so a graph cycling over them reads
new bytes each call.  Rows under a window read only the last W (+ sink) keys
of each sequence: their replicas are overlapping views of one buffer, shifted
by the attended keys, so R replicas cost K + (R - 1) * shift keys, not R * K.

Imports torch at import time: only the measuring path imports this module.
"""

from __future__ import annotations

import math

import torch

from . import pages as pg
from .shapes import replica_shift
from .gpu import TORCH_DTYPE, torch_kv_dtype

# fp8 rows: k is stored as k / K_SCALE so the dequantised cache is random normal;
# v_scale stays 1 (FlashInfer applies a v_scale other than 1 as an extra kernel).
FP8_K_SCALE = 0.5
FP8_V_SCALE = 1.0
_RAW = {1: torch.uint8, 2: torch.int16}


def _raw(x):
    """The same bytes as an integer tensor (fp8 tensors lack indexing and padding ops)."""
    return x.view(_RAW[x.element_size()])


def pool_from(x, plan: pg.PagePlan):
    """[B, Hkv, K, D] (any strides) -> HND pool [pages, Hkv, P, D] laid out as
    ``plan`` says: slot s holds page ``plan.source[s]``; the dummy page is zero."""
    B, H, K, D = x.shape
    P, per_seq = plan.page_size, plan.pages_per_seq
    raw = _raw(x)
    if per_seq * P != K:
        raw = torch.nn.functional.pad(raw, (0, 0, 0, per_seq * P - K))
    paged = raw.unflatten(2, (per_seq, P)).permute(0, 2, 1, 3, 4)     # [B, pages, H, P, D]
    src = torch.as_tensor(plan.source, device=x.device)
    pool = torch.zeros((plan.num_pages, H, P, D), dtype=raw.dtype, device=x.device)
    if plan.num_live:
        pool[:plan.num_live] = paged[src // per_seq, src % per_seq]
    return pool.view(x.dtype)


class Pools:
    """Page pools of every replica and the tables that address them."""

    def __init__(self, data, page_size: int, shuffle_seed):
        case = data.case
        self.plan = pg.plan_pages(case.lengths(), case.shape.K, page_size, case.window,
                                  case.sink_tokens, shuffle_seed)
        self.page_size = page_size
        self.k = [pool_from(k, self.plan) for k in data.k]
        self.v = [pool_from(v, self.plan) for v in data.v]
        dev = data.q.device
        max_pages = case.max_pages if case.page_size == page_size else \
            max(1, -(-max(case.lengths()) // page_size))
        self.block_table = torch.as_tensor(self.plan.block_table(max_pages), device=dev)
        indptr, indices, last = self.plan.flashinfer_arrays()
        self.indptr = torch.as_tensor(indptr, device=dev)
        self.indices = torch.as_tensor(indices, device=dev)
        self.last_page_len = torch.as_tensor(last, device=dev)


class CaseData:
    """q [B, Hq, D] and R replicas of k, v [B, Hkv, K, D] (HND, random normal;
    fp8 rows: quantised), plus what the row's extensions need."""

    def __init__(self, case, replicas: int, seed: int, device="cuda"):
        s = case.shape
        self.case, self.R = case, replicas
        self.tdtype = TORCH_DTYPE[case.dtype]
        self.kv_tdtype = torch_kv_dtype(case.kv_dtype)
        self.scale = 1.0 / math.sqrt(s.D)
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        self.q = torch.randn((s.B, s.Hq, s.D), dtype=self.tdtype, device=device, generator=gen)
        self.k_scale = FP8_K_SCALE if case.fp8 else 1.0
        self.v_scale = FP8_V_SCALE if case.fp8 else 1.0
        self.shift = replica_shift(case)
        self.k_buf = self._random((1.0 / self.k_scale), gen, device)
        self.v_buf = self._random((1.0 / self.v_scale), gen, device)
        self.k = [self._replica(self.k_buf, r) for r in range(replicas)]
        self.v = [self._replica(self.v_buf, r) for r in range(replicas)]
        needs_lens = case.ragged or case.paged
        self.seq_lens = (torch.tensor(case.lengths(), dtype=torch.int32, device=device)
                         if needs_lens else None)
        self.sink_logits = (torch.randn((s.Hq,), dtype=torch.float32, device=device,
                                        generator=gen) if case.sink_logits else None)
        self._pools = {}

    def _random(self, amplitude: float, gen, device):
        """The KV buffer: [R, B, Hkv, K, D], or for window rows [B, Hkv, K + (R-1)*shift, D]."""
        s = self.case.shape
        shape = ((s.B, s.Hkv, s.K + (self.R - 1) * self.shift, s.D) if self.shift
                 else (self.R, s.B, s.Hkv, s.K, s.D))
        if not self.case.fp8:
            return torch.randn(shape, dtype=self.tdtype, device=device, generator=gen)
        buf = torch.empty(shape, dtype=self.kv_tdtype, device=device)
        flat, n = buf.view(-1), buf.numel()
        step = 1 << 28                               # quantise in pieces: 1 GiB of f32 at most
        for i in range(0, n, step):
            part = torch.randn((min(step, n - i),), dtype=torch.float32, device=device,
                               generator=gen)
            flat[i:i + part.numel()] = (part * amplitude).to(self.kv_tdtype)
        return buf

    def _replica(self, buf, r: int):
        if self.shift:
            return buf[:, :, r * self.shift:r * self.shift + self.case.shape.K]
        return buf[r]

    def reference(self, r: int, gpu):
        """The float32 reference of replica ``r`` (from the dequantised cache)."""
        c = self.case
        return gpu.reference(self.q, self.k[r], self.v[r], self.scale, lengths=c.lengths(),
                             window=c.window, sink_tokens=c.sink_tokens,
                             sink_logits=self.sink_logits, k_scale=self.k_scale,
                             v_scale=self.v_scale, soft_cap=c.soft_cap)

    def pools(self, page_size: int, shuffle: bool) -> Pools:
        """Page pools (built once per page size and order, shared by methods)."""
        key = (page_size, shuffle)
        if key not in self._pools:
            self._pools[key] = Pools(self, page_size, 1234 if shuffle else None)
        return self._pools[key]

    def release_pools(self):
        self._pools.clear()

    def release(self):
        self._pools.clear()
        self.k = self.v = None
        self.k_buf = self.v_buf = self.q = self.seq_lens = self.sink_logits = None
