"""Decodes through the C ABI for compute-sanitizer (scripts/sanitize.sh), one
case per kernel path: the contiguous vectorised and element-load kernels, the
wide 8-warp kernel (unsplit and split), split + merge, batch-invariant,
head_dim 7 / 72 / 256, paged caches (pages of 1, 16, 17 and 32 keys, NHD and
HND pools, shuffled ids; one-page tiles in the heads-as-M and keys-as-M kernels),
fp8 e4m3 / e5m2 caches (contiguous and paged, per-tensor and per-head scales,
groups of up to 8 and over 8),
sink tokens under a window, ALiBi, soft-cap, sink logits, LSE, an out-of-pool
page id (that row NaN, the pools never read outside), and merge_states.

Each case asks fd_decode_plan which path the call takes and fails when it is
not the one the case is for, so a change of the planner cannot silently leave
a path unsanitized. Inputs are made on the host and copied to the device (no
PyTorch kernels run on the device besides copies), every buffer the kernels
may read is written first (initcheck: the workspace is filled with 0xFF, so a
partial read before it is written turns into NaN and a wrong answer), outputs
start as NaN, and each result is checked against a float64 reference computed
on the host; the process exits non-zero on any wrong answer or refusal.

Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 (sanitize.sh does) so that every
tensor is its own allocation and memcheck sees a read past a pool."""
from __future__ import annotations

import ctypes as C
import math
import os
import sys
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fdparams as fp  # noqa: E402

DEV = torch.device("cuda")
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPE_CODE = {torch.float16: fp.F16, torch.bfloat16: fp.BF16, torch.float32: fp.F32}
FP8 = {"e4m3": (torch.float8_e4m3fn, fp.FP8_E4M3), "e5m2": (torch.float8_e5m2, fp.FP8_E5M2)}


class Case:
    """One decode. kv: "16" (q's type), "e4m3" or "e5m2"; layout: "hnd", "nhd",
    "odd" (padded rows of D + 1: element loads), "paged-nhd", "paged-hnd";
    expect: the plan facts this case is for."""

    def __init__(self, name, b, hq, hkv, k_len, d, dtype=torch.bfloat16, layout="hnd", page=16,
                 kv="16", scales=None, lens=None, window=0, sink_tokens=0, sinks=False,
                 alibi=False, soft_cap=0.0, invariant=False, bad_page=False, **expect):
        self.name, self.b, self.hq, self.hkv, self.k_len, self.d = name, b, hq, hkv, k_len, d
        self.dtype, self.layout, self.page, self.kv, self.scales = dtype, layout, page, kv, scales
        self.lens, self.window, self.sink_tokens = lens, window, sink_tokens
        self.sinks, self.alibi, self.soft_cap = sinks, alibi, soft_cap
        self.invariant, self.bad_page, self.expect = invariant, bad_page, expect

    @property
    def paged(self):
        return self.layout.startswith("paged")


def ragged(b, k_len):
    """Lengths k_len, then shorter ones down to 0."""
    return [k_len if i == 0 else (k_len * (b - i)) // (b + 1) + i % 3 for i in range(b - 1)] + [0]


CASES = [
    Case("contiguous_vectorised", 2, 32, 8, 1000, 128, vectorized=1),
    Case("element_loads", 2, 8, 2, 777, 64, layout="odd", vectorized=0),
    Case("d7", 2, 4, 4, 300, 7, vectorized=0),
    Case("d72_nhd", 3, 8, 2, 777, 72, dtype=torch.float16, layout="nhd"),
    Case("d256_split", 1, 16, 8, 8192, 256, split=True),
    Case("wide_8_warps", 32, 16, 16, 1024, 64, warps=8, split=False),
    Case("split_merge", 1, 32, 8, 4096, 128, dtype=torch.float16, split=True),
    # One wave of 16-bit D = 128 split CTAs streaming over 2 MiB each: the 8-warp
    # kernel writes the partials (131 chunks of 4608 keys, the last of 961).
    Case("wide_split_8_warps", 1, 1, 1, 600001, 128, warps=8, split=True),
    Case("batch_invariant", 3, 16, 4, 1500, 128, invariant=True, lens=ragged(3, 1500)),
    # Grids of several waves with per-sequence lengths take their sequences
    # longest first (a rank over the lengths in shared memory, after the wait;
    # CTAs of >= 16 KB of K and V per sequence at full length).
    Case("longest_first_ragged", 64, 32, 8, 2100, 128, lens=ragged(64, 2100), split=False),
    Case("longest_first_paged_bad_page", 40, 16, 8, 2600, 64, layout="paged-hnd", page=16,
         lens=ragged(40, 2600), bad_page=True, split=False),
    # Page 1 (per-key lookups) ranks before it prefetches anything: 512 CTAs of
    # 1.1 MB at full length, over the rule's 16 KB per sequence of the 64.
    Case("longest_first_page1", 64, 32, 8, 2200, 128, layout="paged-nhd", page=1,
         lens=ragged(64, 2200), split=False),
    Case("k0", 2, 8, 8, 0, 128, dtype=torch.float16),
    Case("paged_page1_nhd", 3, 8, 2, 300, 64, layout="paged-nhd", page=1, lens=ragged(3, 300)),
    Case("paged_page16_hnd", 4, 16, 4, 3000, 128, layout="paged-hnd", page=16,
         lens=ragged(4, 3000), split=True),
    # A group of 16 at head_dim 256: the heads-as-M kernel over one-page tiles.
    Case("paged_page32_group16_d256", 2, 32, 2, 2000, 256, dtype=torch.float16,
         layout="paged-nhd", page=32, lens=ragged(2, 2000)),
    Case("paged_page17_nhd", 3, 8, 8, 1000, 72, dtype=torch.float16, layout="paged-nhd", page=17,
         lens=ragged(3, 1000)),
    Case("fp8_e4m3_contiguous", 2, 16, 4, 2000, 128, kv="e4m3", scales="tensor", vectorized=1),
    Case("fp8_e5m2_contiguous", 2, 16, 4, 2000, 256, dtype=torch.float16, kv="e5m2",
         scales="head"),
    # Groups over 8 take the heads-as-M fp8 kernel (query rows gid and gid + 8
    # per thread); 12 heads leave rows 12-15 empty, head_dim 100 a partial bucket.
    Case("fp8_e4m3_group12", 2, 24, 2, 1500, 100, kv="e4m3", scales="tensor"),
    Case("fp8_e5m2_group16_d256", 2, 32, 2, 900, 256, dtype=torch.float16, kv="e5m2",
         scales="head"),
    # One wave of unsplit D = 128 CTAs: the 8-warp paired kernel; 250 tiles give
    # the warps 31 or 32 each (an odd last tile) and the last tile 6 keys.
    Case("fp8_e5m2_pairs_8_warps", 16, 32, 8, 3990, 128, kv="e5m2", scales="tensor",
         soft_cap=30.0, warps=8, split=False),
    Case("fp8_e4m3_paged", 3, 16, 4, 1500, 128, layout="paged-nhd", page=16, kv="e4m3",
         scales="head", lens=ragged(3, 1500)),
    Case("fp8_e5m2_paged", 3, 8, 2, 700, 64, layout="paged-hnd", page=17, kv="e5m2",
         scales="tensor", lens=ragged(3, 700)),
    Case("window_sink_tokens", 3, 8, 2, 2000, 128, lens=ragged(3, 2000), window=100,
         sink_tokens=4),
    Case("alibi_soft_cap_sinks", 2, 16, 4, 3000, 128, dtype=torch.float16, alibi=True,
         soft_cap=20.0, sinks=True),
    Case("paged_everything", 3, 16, 4, 5000, 128, layout="paged-hnd", page=16,
         lens=ragged(3, 5000), window=300, sink_tokens=4, sinks=True, alibi=True, soft_cap=30.0,
         invariant=True),
    Case("out_of_pool_page", 3, 8, 2, 600, 64, layout="paged-nhd", page=16, bad_page=True),
    # fp8 at D = 128 on whole-tile pages: the paired kernel meets the bad id.
    Case("fp8_out_of_pool_page_pairs", 3, 16, 4, 2000, 128, layout="paged-nhd", page=16,
         kv="e4m3", scales="tensor", bad_page=True),
    # The kernels that warm their block-table lines (one wave of 132 SMs): long
    # warp streams (several 32-tile windows), ragged lengths down to 0, a bad id.
    Case("paged_warm_table_8_warps", 66, 4, 2, 8400, 64, layout="paged-nhd", page=16,
         lens=ragged(66, 8400), bad_page=True, warps=8, split=False),
    Case("fp8_paged_warm_table_pairs", 66, 8, 2, 8400, 128, layout="paged-hnd", page=16,
         kv="e4m3", scales="head", lens=ragged(66, 8400), bad_page=True, warps=8, split=False),
    Case("paged_warm_table_d96_keys_as_m", 4, 32, 32, 3000, 96, dtype=torch.float16,
         layout="paged-nhd", page=16, lens=ragged(4, 3000), warps=4, split=False),
    Case("paged_warm_table_split", 1, 16, 4, 50000, 128, layout="paged-hnd", page=16,
         warps=4, split=True),
    # A contiguous range of tiles per warp (grids of one wave that fill the
    # SMs; the warm-table cases above on 132 SMs take them too): the 8-warp
    # 16-bit D = 128 kernel, ragged lengths down to 0, a bad id.
    Case("paged_tile_ranges_8_warps", 16, 32, 8, 4100, 128, layout="paged-hnd", page=16,
         lens=ragged(16, 4100), bad_page=True, warps=8, split=False, fills_sms=True),
]


def host_randn(shape, gen, dtype):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)


def dev(t):
    return t.to(DEV)


class Built:
    """The device buffers of a case (kept alive until the call is done)."""


def build(case, gen):
    """The call's buffers, params and what the reference needs (all on the host)."""
    c, x = case, Built()
    b, hq, hkv, k_len, d = c.b, c.hq, c.hkv, c.k_len, c.d
    x.q_h = host_randn((b, hq, d), gen, c.dtype)
    kv_type = c.dtype if c.kv == "16" else FP8[c.kv][0]
    lens = list(c.lens) if c.lens is not None else [k_len] * b
    x.table = None
    if c.paged:
        p = c.page
        need = [(n + p - 1) // p for n in lens]
        num_pages = sum(need) + 2
        ids = torch.randperm(num_pages, generator=gen).tolist()
        max_pages = (k_len + p - 1) // p
        table = torch.full((b, max_pages), -1, dtype=torch.int32)
        at = 0
        for i in range(b):
            table[i, :need[i]] = torch.tensor(ids[at:at + need[i]], dtype=torch.int32)
            at += need[i]
        if c.bad_page:
            table[1, need[1] // 2] = num_pages  # outside the pool, among the pages row 1 needs
        shape = (num_pages, p, hkv, d) if c.layout == "paged-nhd" else (num_pages, hkv, p, d)
        x.k_h = host_randn(shape, gen, kv_type)
        x.v_h = host_randn(shape, gen, kv_type)
        x.table = table
        x.num_pages, x.max_pages = num_pages, max_pages
        k_len = max_pages * p
    elif c.layout == "odd":  # rows of D + 1 elements: no 16-byte copies
        x.k_h = host_randn((b, hkv, k_len, d + 1), gen, kv_type)[..., :d]
        x.v_h = host_randn((b, hkv, k_len, d + 1), gen, kv_type)[..., :d]
    elif c.layout == "nhd":
        x.k_h = host_randn((b, k_len, hkv, d), gen, kv_type).transpose(1, 2)
        x.v_h = host_randn((b, k_len, hkv, d), gen, kv_type).transpose(1, 2)
    else:
        x.k_h = host_randn((b, hkv, k_len, d), gen, kv_type)
        x.v_h = host_randn((b, hkv, k_len, d), gen, kv_type)
    x.k_len, x.lens = k_len, lens
    x.k_scale = x.v_scale = 0.0
    x.k_scales_h = x.v_scales_h = None
    if c.scales == "tensor":
        x.k_scale, x.v_scale = 0.5, 1.5
    elif c.scales == "head":
        x.k_scales_h = torch.linspace(0.25, 2.0, hkv, dtype=torch.float32)
        x.v_scales_h = torch.linspace(1.5, 0.5, hkv, dtype=torch.float32)
    x.sinks_h = torch.linspace(-2.0, 1.0, hq, dtype=torch.float32) if c.sinks else None
    x.alibi_h = (torch.tensor([2.0 ** (-8.0 * (i + 1) / hq) for i in range(hq)],
                              dtype=torch.float32) if c.alibi else None)
    return x


def to_params(case, x):
    """Device copies of every input, the outputs (NaN), and the fd_decode_params."""
    c = case
    x.q = dev(x.q_h)
    # Strided host views go over with their storage and strides.
    x.k = dev_view(x.k_h)
    x.v = dev_view(x.v_h)
    x.y = dev(torch.full((c.b, c.hq, c.d), float("nan"), dtype=c.dtype))
    x.lse = dev(torch.full((c.b, c.hq), float("nan"), dtype=torch.float32))
    x.seq_lens = dev(torch.tensor(x.lens, dtype=torch.int32))
    x.block_table = dev(x.table) if x.table is not None else None
    x.k_scales = dev(x.k_scales_h) if x.k_scales_h is not None else None
    x.v_scales = dev(x.v_scales_h) if x.v_scales_h is not None else None
    x.sinks = dev(x.sinks_h) if x.sinks_h is not None else None
    x.alibi = dev(x.alibi_h) if x.alibi_h is not None else None
    p = fp.new_params(dtype=DTYPE_CODE[c.dtype], batch_size=c.b, num_heads=c.hq,
                      num_kv_heads=c.hkv, k_len=x.k_len, head_dim=c.d, scale=c.d ** -0.5)
    p.kv_dtype = 0 if c.kv == "16" else FP8[c.kv][1]
    p.q, p.k, p.v, p.y = x.q.data_ptr(), x.k.data_ptr(), x.v.data_ptr(), x.y.data_ptr()
    p.q_stride_b, p.q_stride_h = x.q.stride(0), x.q.stride(1)
    p.y_stride_b, p.y_stride_h = x.y.stride(0), x.y.stride(1)
    if c.paged:
        if c.layout == "paged-nhd":  # [pages, P, Hkv, D]
            sp, sk, sh = x.k.stride(0), x.k.stride(1), x.k.stride(2)
        else:                        # [pages, Hkv, P, D]
            sp, sh, sk = x.k.stride(0), x.k.stride(1), x.k.stride(2)
        p.k_stride_page = p.v_stride_page = sp
        p.k_stride_h = p.v_stride_h = sh
        p.k_stride_k = p.v_stride_k = sk
        p.block_table = x.block_table.data_ptr()
        p.block_table_stride_b = x.block_table.stride(0)
        p.page_size, p.max_pages, p.num_pages = c.page, x.max_pages, x.num_pages
    else:
        p.k_stride_b, p.k_stride_h, p.k_stride_k = x.k.stride(0), x.k.stride(1), x.k.stride(2)
        p.v_stride_b, p.v_stride_h, p.v_stride_k = x.v.stride(0), x.v.stride(1), x.v.stride(2)
    p.lse, p.lse_stride_b, p.lse_stride_h = x.lse.data_ptr(), x.lse.stride(0), x.lse.stride(1)
    if c.lens is not None or c.paged:
        p.seq_lens = x.seq_lens.data_ptr()
    p.k_scale, p.v_scale = x.k_scale, x.v_scale
    if x.k_scales is not None:
        p.k_scales, p.v_scales = x.k_scales.data_ptr(), x.v_scales.data_ptr()
    p.window_size, p.sink_tokens = c.window, c.sink_tokens
    if x.sinks is not None:
        p.sinks = x.sinks.data_ptr()
    if x.alibi is not None:
        p.alibi_slopes = x.alibi.data_ptr()
    p.logits_soft_cap = c.soft_cap
    p.flags = fp.FLAG_BATCH_INVARIANT if c.invariant else 0
    st, need = fp.workspace_size(p)
    if st != 0:
        raise RuntimeError(f"fd_decode_workspace_size = {st}: {fp.last_error()}")
    # NaN bytes: a partial the merge read before the decode wrote it shows as a
    # wrong answer, and initcheck sees the workspace initialised.
    x.ws = dev(torch.full((max(need, 16),), 0xFF, dtype=torch.uint8))
    p.workspace, p.workspace_bytes = x.ws.data_ptr(), need
    return p


def dev_view(t):
    """t on the device with the same strides, over a copy of its whole host
    storage (padding included, so every byte the kernels may touch is set)."""
    flat = t.as_strided((t.untyped_storage().nbytes() // t.element_size(),), (1,), 0)
    return dev(flat).as_strided(t.shape, t.stride(), t.storage_offset())


def dequant(t, scale, scales, head_axis):
    """float64 values of a cache (fp8 exactly) times its scales (per KV head
    along head_axis, or one per tensor)."""
    v = t.to(torch.float64)
    if scales is not None:
        shape = [1] * v.dim()
        shape[head_axis] = -1
        v = v * scales.to(torch.float64).view(shape)
    elif scale:
        v = v * scale
    return v


def reference(case, x):
    """(y [B, Hq, D], lse [B, Hq]) in float64 on the host; NaN rows per the header."""
    c = case
    g = c.hq // c.hkv
    head_axis = (2 if c.layout == "paged-nhd" else 1) if c.paged else 1
    k = dequant(x.k_h, x.k_scale, x.k_scales_h, head_axis)
    v = dequant(x.v_h, x.v_scale, x.v_scales_h, head_axis)
    q = x.q_h.to(torch.float64)
    y = torch.zeros(c.b, c.hq, c.d, dtype=torch.float64)
    lse = torch.full((c.b, c.hq), -math.inf, dtype=torch.float64)
    for b in range(c.b):
        n = x.lens[b]
        if c.paged:
            npages = (n + c.page - 1) // c.page if n > 0 else 0
            ids = x.table[b, :npages].tolist()
            if n < 0 or n > x.k_len or any(i < 0 or i >= x.num_pages for i in ids):
                y[b] = math.nan
                lse[b] = math.nan
                continue
        else:
            n = max(0, min(n, x.k_len))
        if n == 0 and x.sinks_h is None:
            continue  # nothing attends: y = 0, lse = -inf
        if n == 0:
            kb = vb = torch.zeros(c.hkv, 0, c.d, dtype=torch.float64)
        elif c.paged:
            if c.layout == "paged-nhd":  # [n, P, Hkv, D] -> [Hkv, n*P, D]
                kb = k[ids].reshape(-1, c.hkv, c.d).transpose(0, 1)[:, :n]
                vb = v[ids].reshape(-1, c.hkv, c.d).transpose(0, 1)[:, :n]
            else:                        # [n, Hkv, P, D] -> [Hkv, n*P, D]
                kb = k[ids].transpose(0, 1).reshape(c.hkv, -1, c.d)[:, :n]
                vb = v[ids].transpose(0, 1).reshape(c.hkv, -1, c.d)[:, :n]
        else:
            kb, vb = k[b, :, :n], v[b, :, :n]
        kb = kb.repeat_interleave(g, dim=0)
        vb = vb.repeat_interleave(g, dim=0)
        s = torch.einsum("hd,hkd->hk", q[b], kb) * (c.d ** -0.5)
        if c.soft_cap > 0:
            s = c.soft_cap * torch.tanh(s / c.soft_cap)
        j = torch.arange(n, dtype=torch.float64)
        if x.alibi_h is not None:
            s = s + x.alibi_h.to(torch.float64)[:, None] * (j - (n - 1))[None, :]
        if c.window > 0:
            keep = (j >= n - c.window) | (j < c.sink_tokens)
            s = s.masked_fill(~keep[None, :], -math.inf)
        parts = [s]
        if x.sinks_h is not None:
            parts.append(x.sinks_h.to(torch.float64)[:, None])
        m = torch.cat(parts, dim=1).max(dim=1).values
        w = torch.exp(s - m[:, None])
        denom = w.sum(dim=1)
        if x.sinks_h is not None:
            denom = denom + torch.exp(x.sinks_h.to(torch.float64) - m)
        y[b] = torch.einsum("hk,hkd->hd", w, vb) / denom[:, None]
        lse[b] = m + torch.log(denom)
    return y, lse


def plan_problems(case, plan):
    """What differs from the path the case is for (empty: the right path)."""
    e, bad = case.expect, []
    if "vectorized" in e and plan.vectorized != e["vectorized"]:
        bad.append(f"vectorized = {plan.vectorized}, wanted {e['vectorized']}")
    if "warps" in e and plan.warps_per_cta != e["warps"]:
        bad.append(f"warps_per_cta = {plan.warps_per_cta}, wanted {e['warps']} (the wide kernel)")
    if "split" in e and (plan.num_splits > 1) != e["split"]:
        bad.append(f"num_splits = {plan.num_splits}, wanted {'> 1' if e['split'] else '1'}")
    if e.get("split") and not plan.merge_kernel:
        bad.append("no merge kernel")
    if e.get("fills_sms") and not plan.num_sms * 15 <= plan.ctas * 16 <= plan.num_sms * 16:
        bad.append(f"ctas = {plan.ctas}, wanted one wave of at least 15/16 of {plan.num_sms} SMs")
    return bad


def rel_err(got, want):
    den = want.norm().item()
    diff = (got - want).norm().item()
    return diff / den if den > 0 else diff


def run_case(case, cc):
    gen = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    x = build(case, gen)
    p = to_params(case, x)
    if case.kv != "16" and cc < 89:
        st, msg = fp.decode(p)
        ok = st == 2 and f"sm_{cc}" in msg
        return ok, f"fp8 below sm_89: status {st} ({msg})"
    st, plan = fp.plan(p)
    if st != 0:
        return False, f"fd_decode_plan = {st}: {fp.last_error()}"
    path = (f"splits={plan.num_splits} warps={plan.warps_per_cta} vec={plan.vectorized} "
            f"merge={plan.merge_kernel}")
    bad = plan_problems(case, plan)
    if bad:
        return False, f"not the path this case is for: {'; '.join(bad)} ({path})"
    outs = []
    for _ in range(2):
        st, msg = fp.decode(p)
        if st != 0:
            return False, f"fd_decode = {st}: {msg}"
        torch.cuda.synchronize()
        outs.append((x.y.cpu(), x.lse.cpu()))
    y, lse = outs[0]
    if not (torch.equal(y.view(torch.int16), outs[1][0].view(torch.int16))
            and torch.equal(lse.view(torch.int32), outs[1][1].view(torch.int32))):
        return False, "repeat not bit-identical"
    y_ref, lse_ref = reference(case, x)
    nan_rows = torch.isnan(y_ref).all(dim=2).all(dim=1)
    problems = []
    for b in range(case.b):
        yb, lb = y[b].to(torch.float64), lse[b].to(torch.float64)
        if nan_rows[b]:
            if not (torch.isnan(yb).all() and torch.isnan(lb).all()):
                problems.append(f"row {b} must be NaN")
            continue
        if not torch.isfinite(yb).all():
            problems.append(f"row {b} not finite (unwritten?)")
            continue
        lref = lse_ref[b]
        same_inf = torch.equal(torch.isinf(lb), torch.isinf(lref))
        fin = torch.isfinite(lref)
        if not same_inf or ((lb[fin] - lref[fin]).abs() > 1e-3 * (1 + lref[fin].abs())).any():
            problems.append(f"row {b} lse wrong")
    good = ~nan_rows
    err = rel_err(y[good].to(torch.float64), y_ref[good]) if good.any() else 0.0
    if err > TOL[case.dtype]:
        problems.append(f"rel err {err:.2e} > {TOL[case.dtype]:.0e}")
    if case.bad_page and not nan_rows.any():
        problems.append("the case has no NaN row")
    return not problems, f"{path}: rel err {err:.2e}" + (f"; {'; '.join(problems)}" if problems else "")


def run_merge(dtype):
    """fd_merge_states of N=3 padded states, one -inf state and an all -inf row."""
    n, b, h, d = 3, 2, 4, 72
    gen = torch.Generator().manual_seed(7)
    big = host_randn((n, b, h, d + 8), gen, dtype)
    states = big[..., :d]
    lse = torch.rand((n, b, h), generator=gen, dtype=torch.float32) * 8 - 4
    lse[1, 0, 1] = -math.inf
    lse[:, 1, 2] = -math.inf
    s_dev, l_dev = dev_view(states), dev(lse)
    y = dev(torch.full((b, h, d), float("nan"), dtype=dtype))
    lo = dev(torch.full((b, h), float("nan"), dtype=torch.float32))
    m = fp.MergeParams()
    m.struct_size = C.sizeof(fp.MergeParams)
    m.dtype, m.num_states, m.batch_size, m.num_heads, m.head_dim = DTYPE_CODE[dtype], n, b, h, d
    m.states = s_dev.data_ptr()
    m.state_stride_n, m.state_stride_b, m.state_stride_h = s_dev.stride()[:3]
    m.lse = l_dev.data_ptr()
    m.lse_stride_n, m.lse_stride_b, m.lse_stride_h = l_dev.stride()
    m.y, m.y_stride_b, m.y_stride_h = y.data_ptr(), y.stride(0), y.stride(1)
    m.lse_out, m.lse_out_stride_b, m.lse_out_stride_h = lo.data_ptr(), lo.stride(0), lo.stride(1)
    st, msg = fp.merge(m)
    if st != 0:
        return False, f"fd_merge_states = {st}: {msg}"
    torch.cuda.synchronize()
    l64 = lse.to(torch.float64)
    mx = l64.max(dim=0).values
    w = torch.where(torch.isinf(l64), torch.zeros_like(l64), torch.exp(l64 - mx.clamp(min=-1e300)))
    den = w.sum(dim=0)
    y_ref = (w[..., None] * states.to(torch.float64)).sum(dim=0) / den.clamp(min=1e-300)[..., None]
    lo_ref = torch.where(den > 0, mx + torch.log(den.clamp(min=1e-300)),
                         torch.full_like(den, -math.inf))
    y_got, lo_got = y.cpu().to(torch.float64), lo.cpu().to(torch.float64)
    tol = {torch.float32: 1e-5}.get(dtype, TOL.get(dtype, 1e-2))
    err = rel_err(y_got, y_ref)
    ok = (err <= tol and bool((y_got[1, 2] == 0).all())
          and torch.equal(torch.isinf(lo_got), torch.isinf(lo_ref))
          and bool(((lo_got - lo_ref).abs()[torch.isfinite(lo_ref)] <= 1e-4).all()))
    return ok, f"rel err {err:.2e}"


def main():
    if not torch.cuda.is_available():
        print("sanitize_driver: torch sees no CUDA device", file=sys.stderr)
        return 1
    major, minor = torch.cuda.get_device_capability()
    cc = major * 10 + minor
    failures = 0
    for case in CASES:
        try:
            ok, detail = run_case(case, cc)
        except Exception as e:  # a broken case is a failure, not a crash of the driver
            ok, detail = False, f"{type(e).__name__}: {e}"
        failures += not ok
        print(f"sanitize_driver: {case.name}: B={case.b} Hq={case.hq} Hkv={case.hkv} "
              f"K={case.k_len} D={case.d} {str(case.dtype)[6:]} kv={case.kv} {case.layout}: "
              f"{detail} {'OK' if ok else 'WRONG'}")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        ok, detail = run_merge(dtype)
        failures += not ok
        print(f"sanitize_driver: merge_states {str(dtype)[6:]}: {detail} {'OK' if ok else 'WRONG'}")
    print(f"sanitize_driver: {len(CASES) + 3 - failures} OK, {failures} wrong")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
