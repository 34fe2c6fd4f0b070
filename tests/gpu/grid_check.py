"""Device correctness grid: every kernel path of the library through the C ABI
(fd_decode, tests/gpu/fdparams.py) against an independent float64 reference
computed with torch, outputs (y and lse) poisoned with NaN first, repeats
bit-identical.

Sections:
  plain     contiguous caches: B, heads, K_len, head_dim 1..128, f16/bf16,
            contiguous and strided layouts
  wide      the same for head_dim 136..256 (the 160, 192 and 256 buckets)
  features  per-sequence lengths, window, sink tokens, sink logits, ALiBi,
            soft-cap, LSE, batch invariance, alone and together
  paged     page pools with shuffled and shared pages, page sizes 1..256,
            NHD and HND pools, lengths around page boundaries, extensions
  fp8       e4m3 / e5m2 caches with f16/bf16 q, per-tensor and per-head scales,
            contiguous and paged (checked against the dequantised cache)
  bad       out-of-pool page ids and over-long lengths: exactly those rows NaN

usage: python tests/gpu/grid_check.py [--quick] [--only SECTION,...] [--json PATH]"""
import argparse
import itertools
import json
import math
import sys
import time

import torch

import fdparams as F

TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
FP8 = {F.FP8_E4M3: torch.float8_e4m3fn, F.FP8_E5M2: torch.float8_e5m2}
DTYPE_CODE = {torch.float16: F.F16, torch.bfloat16: F.BF16}
DEV = "cuda"


def ptr(t):
    return None if t is None else t.data_ptr()


# ----------------------------------------------------------------------------- reference

def reference(q, k, v, lens, scale, window=0, sink_tokens=0, sinks=None, alibi=None, cap=0.0):
    """float64 decode of q [B, Hq, D] over dense k, v [B, Hkv, K, D] (already
    dequantised), sequence b using keys 0..lens[b]-1. Returns (y, lse)."""
    B, Hq, D = q.shape
    Hkv, K = k.shape[1], k.shape[2]
    g = Hq // Hkv
    qd = q.double().reshape(B, Hkv, g, D)
    logits = torch.einsum("bhgd,bhkd->bhgk", qd, k.double()) * scale
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    j = torch.arange(K, device=q.device, dtype=torch.float64)
    L = lens.to(torch.float64).reshape(B, 1, 1, 1)
    if alibi is not None:
        slope = alibi.double().reshape(1, Hkv, g, 1)
        logits = logits + slope * (j.reshape(1, 1, 1, K) - (L - 1))
    jj = j.reshape(1, 1, 1, K)
    attended = jj < L
    if window > 0:
        attended = attended & ((jj >= L - window) | (jj < sink_tokens))
    logits = logits.masked_fill(~attended, -math.inf)
    if K == 0:  # no keys: only a sink logit (if any) is in the softmax
        m = torch.full((B, Hkv, g, 1), -math.inf, device=q.device, dtype=torch.float64)
    else:
        m = logits.amax(dim=-1, keepdim=True)
    if sinks is not None:
        m = torch.maximum(m, sinks.double().reshape(1, Hkv, g, 1))
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(logits - m_safe)
    den = p.sum(-1, keepdim=True)
    if sinks is not None:
        den = den + torch.exp(sinks.double().reshape(1, Hkv, g, 1) - m_safe)
    y = torch.einsum("bhgk,bhkd->bhgd", p, v.double())
    y = torch.where(den > 0, y / den.clamp_min(1e-300), torch.zeros_like(y))
    lse = torch.where(den > 0, m_safe + torch.log(den.clamp_min(1e-300)),
                      torch.full_like(den, -math.inf))
    return y.reshape(B, Hq, D), lse.reshape(B, Hq)


def rel_err(y, ref):
    y = y.double()
    if not torch.isfinite(y).all():
        return math.inf
    den = ref.norm().item()
    return (y - ref).norm().item() / den if den > 0 else (y - ref).norm().item()


# ----------------------------------------------------------------------------- one call

class Case:
    """Inputs of one call plus the reference's view of them."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def run_twice(p):
    """fd_decode twice (outputs poisoned with NaN before each); returns the
    status, message and both outputs."""
    outs = []
    for _ in range(2):
        p_y.fill_(float("nan"))
        if p_lse is not None:
            p_lse.fill_(float("nan"))
        st, msg = F.decode(p)
        if st != 0:
            return st, msg, None
        torch.cuda.synchronize()
        outs.append((p_y.clone(), None if p_lse is None else p_lse.clone()))
    return 0, "", outs


p_y = p_lse = None  # the current case's outputs (run_twice poisons them)


def check(c, p, ref_y, ref_lse, tol, nan_rows=None):
    """Runs p, compares with the reference; nan_rows: batch rows that must be NaN."""
    global p_y, p_lse
    p_y, p_lse = c.y, c.lse
    need_st, need = F.workspace_size(p)
    if need_st != 0:
        return {"ok": False, "why": f"workspace size status {need_st}: {F.last_error()}"}
    ws = torch.empty(max(need, 16), dtype=torch.uint8, device=DEV)
    p.workspace, p.workspace_bytes = ws.data_ptr(), need
    st, msg, outs = run_twice(p)
    if st != 0:
        return {"ok": False, "why": f"status {st}: {msg}"}
    (y0, l0), (y1, l1) = outs
    same = torch.equal(y0.view(torch.int16), y1.view(torch.int16)) and (
        l0 is None or torch.equal(l0.view(torch.int32), l1.view(torch.int32)))
    if not same:
        return {"ok": False, "why": "repeat not bit-identical"}
    good = torch.ones(y0.shape[0], dtype=torch.bool, device=DEV)
    if nan_rows:
        for b in nan_rows:
            good[b] = False
            if not torch.isnan(y0[b]).all() or (l0 is not None and not torch.isnan(l0[b]).all()):
                return {"ok": False, "why": f"row {b} should be NaN"}
    yg, rg = y0[good], ref_y[good]
    if not torch.isfinite(yg).all():
        return {"ok": False, "why": "non-finite output (unwritten or NaN)"}
    err = rel_err(yg, rg) if rg.numel() and rg.abs().max() > 0 else float(yg.abs().max().item() if yg.numel() else 0.0)
    ok = err <= tol
    why = "" if ok else f"rel err {err:.3e} > {tol}"
    if ok and l0 is not None:
        lg, rl = l0[good].double(), ref_lse[good]
        fin = torch.isfinite(rl)
        if not torch.equal(torch.isfinite(lg), fin) or (
                fin.any() and (lg[fin] - rl[fin]).abs().max().item() > 1e-3 * max(1.0, rl[fin].abs().max().item())):
            ok, why = False, "lse differs from the reference"
    return {"ok": ok, "err": err, "why": why}


def base_params(q, y, B, Hq, Hkv, K, D, scale, dtype):
    return F.new_params(dtype=DTYPE_CODE[dtype], q=ptr(q), y=ptr(y), batch_size=B, num_heads=Hq,
                        num_kv_heads=Hkv, k_len=K, head_dim=D, scale=scale,
                        q_stride_b=q.stride(0), q_stride_h=q.stride(1),
                        y_stride_b=y.stride(0), y_stride_h=y.stride(1))


def rnd(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen, device=DEV, dtype=torch.float32).to(dtype)


def kv_cache(gen, B, Hkv, K, D, dtype, layout):
    """k, v of shape [B, Hkv, K, D] in one of several layouts (views of bigger buffers)."""
    if layout == "contig":
        return rnd(gen, B, Hkv, K, D, dtype=dtype), rnd(gen, B, Hkv, K, D, dtype=dtype)
    k = rnd(gen, B, K, Hkv, D, dtype=dtype).permute(0, 2, 1, 3)                # NHD
    v = rnd(gen, B, Hkv, K + 5, D + 8, dtype=dtype)[:, :, 2:K + 2, :D]         # a slice
    return k, v


def set_kv(p, k, v):
    p.k, p.v = ptr(k), ptr(v)
    p.k_stride_b, p.k_stride_h, p.k_stride_k = k.stride(0), k.stride(1), k.stride(2)
    p.v_stride_b, p.v_stride_h, p.v_stride_k = v.stride(0), v.stride(1), v.stride(2)


def outputs(B, Hq, D, dtype, strided, with_lse=True):
    if strided:
        y = torch.empty(B, Hq + 2, D + 1, device=DEV, dtype=dtype)[:, 1:Hq + 1, :D]
    else:
        y = torch.empty(B, Hq, D, device=DEV, dtype=dtype)
    lse = torch.empty(B, Hq, device=DEV, dtype=torch.float32) if with_lse else None
    return y, lse


def set_lse(p, lse):
    if lse is not None:
        p.lse, p.lse_stride_b, p.lse_stride_h = ptr(lse), lse.stride(0), lse.stride(1)


# ----------------------------------------------------------------------------- sections

def plain_cases(quick):
    Bs = [1, 3, 8]
    heads = [(1, 1), (8, 8), (32, 8), (28, 4), (8, 1)]
    Ks = [0, 1, 7, 255, 256, 257, 1000, 4096, 33000]
    Ds = [1, 7, 64, 72, 80, 96, 128]
    if quick:
        Bs, Ks, Ds = [1, 3], [0, 1, 257, 4096], [7, 72, 128]
    for B, (Hq, Hkv), K, D, dtype, strided in itertools.product(
            Bs, heads, Ks, Ds, [torch.float16, torch.bfloat16], [False, True]):
        if B * Hkv * K * D > 8 * 8 * 33000 * 128:
            continue
        yield dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype=dtype, strided=strided)


def wide_cases(quick):
    """head_dim past 128: the 160, 192 and 256 buckets, tails masked."""
    Bs = [1, 3]
    heads = [(16, 8), (8, 1), (32, 32)]
    Ks = [0, 1, 257, 4096, 33000]
    Ds = [136, 160, 192, 200, 256]
    if quick:
        Bs, Ks = [3], [1, 257, 4096]
    for B, (Hq, Hkv), K, D, dtype, strided in itertools.product(
            Bs, heads, Ks, Ds, [torch.float16, torch.bfloat16], [False, True]):
        if B * Hkv * K * D > 8 * 8 * 33000 * 128:
            continue
        yield dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype=dtype, strided=strided)


def run_plain(gen, B, Hq, Hkv, K, D, dtype, strided):
    q = rnd(gen, B, Hq, D + 3, dtype=dtype)[:, :, :D] if strided else rnd(gen, B, Hq, D, dtype=dtype)
    k, v = kv_cache(gen, B, Hkv, K, D, dtype, "strided" if strided else "contig")
    y, lse = outputs(B, Hq, D, dtype, strided)
    scale = 1.0 / math.sqrt(D)
    p = base_params(q, y, B, Hq, Hkv, K, D, scale, dtype)
    set_kv(p, k, v)
    set_lse(p, lse)
    lens = torch.full((B,), K, device=DEV)
    ry, rl = reference(q, k, v, lens, scale)
    c = Case(y=y, lse=lse)
    return check(c, p, ry, rl, TOL[dtype])


def feature_cases(quick):
    combos = [
        dict(seq_lens=True),
        dict(window=100),
        dict(window=100, sink_tokens=4),
        dict(window=5000, sink_tokens=4),          # window covers the sinks
        dict(window=1, sink_tokens=70),            # sinks across tiles and splits
        dict(sinks=True),
        dict(alibi=True),
        dict(cap=30.0),
        dict(batch_invariant=True),
        dict(seq_lens=True, window=257, sink_tokens=4, sinks=True, alibi=True, cap=20.0),
        dict(seq_lens=True, batch_invariant=True, window=300, sink_tokens=8),
    ]
    shapes = [(3, 32, 8, 9000, 128), (2, 8, 8, 700, 64), (4, 16, 2, 2048, 256), (1, 8, 1, 1000, 72)]
    if quick:
        shapes = shapes[:1] + shapes[2:3]
    for (B, Hq, Hkv, K, D), f, dtype in itertools.product(shapes, combos, [torch.bfloat16, torch.float16]):
        yield dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, dtype=dtype, feats=f)


def extension_tensors(gen, p, B, Hq, K, f):
    """Sets the extension fields of p from the feature dict f; returns the
    reference's keyword arguments and the lengths."""
    ext = {}
    lens = torch.full((B,), K, device=DEV, dtype=torch.int32)
    keep = []
    if f.get("seq_lens"):
        lens = torch.randint(0, K + 1, (B,), generator=gen, device=DEV, dtype=torch.int32)
        lens[0] = K
        if B > 1:
            lens[1] = min(K, 1)
        p.seq_lens = ptr(lens)
        keep.append(lens)
    if f.get("window"):
        p.window_size = f["window"]
        ext["window"] = f["window"]
    if f.get("sink_tokens"):
        p.sink_tokens = f["sink_tokens"]
        ext["sink_tokens"] = f["sink_tokens"]
    if f.get("sinks"):
        s = rnd(gen, Hq) * 2
        p.sinks = ptr(s)
        ext["sinks"] = s
        keep.append(s)
    if f.get("alibi"):
        a = torch.rand(Hq, generator=gen, device=DEV) * 0.1
        p.alibi_slopes = ptr(a)
        ext["alibi"] = a
        keep.append(a)
    if f.get("cap"):
        p.logits_soft_cap = f["cap"]
        ext["cap"] = f["cap"]
    if f.get("batch_invariant"):
        p.flags = F.FLAG_BATCH_INVARIANT
    return ext, lens, keep


def run_features(gen, B, Hq, Hkv, K, D, dtype, feats):
    q = rnd(gen, B, Hq, D, dtype=dtype)
    k, v = kv_cache(gen, B, Hkv, K, D, dtype, "contig")
    y, lse = outputs(B, Hq, D, dtype, False)
    scale = 1.0 / math.sqrt(D)
    p = base_params(q, y, B, Hq, Hkv, K, D, scale, dtype)
    set_kv(p, k, v)
    set_lse(p, lse)
    ext, lens, _keep = extension_tensors(gen, p, B, Hq, K, feats)
    ry, rl = reference(q, k, v, lens, scale, **ext)
    return check(Case(y=y, lse=lse), p, ry, rl, TOL[dtype])


def make_pool(gen, num_pages, P, Hkv, D, layout, elem):
    shape = (num_pages, P, Hkv, D) if layout == "NHD" else (num_pages, Hkv, P, D)
    if elem in FP8:
        return (rnd(gen, *shape) * 2).to(FP8[elem])
    return rnd(gen, *shape, dtype=elem)


def gather(pool, table, layout, K, P):
    """The dense [B, Hkv, K, D] view of a pool through a block table, gathered
    on bytes (fp8 tensors do not index), as float64."""
    B, max_pages = table.shape
    raw = pool.view(torch.uint8) if pool.element_size() == 1 else pool.view(torch.int16)
    j = torch.arange(max_pages * P, device=DEV)
    pages = table.long()[:, j // P]
    slots = (j % P).reshape(1, -1).expand(B, -1)
    if layout == "NHD":                  # [pages, P, Hkv, D]
        dense = raw[pages, slots]
    else:                                # [pages, Hkv, P, D]
        dense = raw.permute(0, 2, 1, 3)[pages, slots]
    dense = dense.view(pool.dtype).permute(0, 2, 1, 3)[:, :, :K]
    return dense.double()


def build_pool(gen, B, Hkv, K, D, P, layout, elem, share):
    """K and V pools holding each sequence's rows in shuffled pages (the first
    pages shared between sequences when `share`, spare pages nobody uses), and
    their block table."""
    max_pages = max(1, -(-K // P))
    n_own = B * max_pages
    num_pages = n_own + 3
    perm = torch.randperm(num_pages, generator=gen, device=DEV)
    table = perm[:n_own].reshape(B, max_pages).to(torch.int32).contiguous()
    if share and B > 1 and max_pages > 1:
        table[1:, : max_pages // 2] = table[0, : max_pages // 2]
    kpool = make_pool(gen, num_pages, P, Hkv, D, layout, elem)
    vpool = make_pool(gen, num_pages, P, Hkv, D, layout, elem)
    return kpool, vpool, table, max_pages, num_pages


def set_pool(p, kpool, vpool, table, layout, max_pages, num_pages, P):
    p.k, p.v = ptr(kpool), ptr(vpool)
    p.block_table, p.block_table_stride_b = ptr(table), table.stride(0)
    p.page_size, p.max_pages, p.num_pages = P, max_pages, num_pages
    if layout == "NHD":   # [pages, P, Hkv, D]
        p.k_stride_page, p.k_stride_k, p.k_stride_h = kpool.stride(0), kpool.stride(1), kpool.stride(2)
        p.v_stride_page, p.v_stride_k, p.v_stride_h = vpool.stride(0), vpool.stride(1), vpool.stride(2)
    else:                 # [pages, Hkv, P, D]
        p.k_stride_page, p.k_stride_h, p.k_stride_k = kpool.stride(0), kpool.stride(1), kpool.stride(2)
        p.v_stride_page, p.v_stride_h, p.v_stride_k = vpool.stride(0), vpool.stride(1), vpool.stride(2)


def paged_cases(quick):
    pages = [1, 3, 16, 17, 64, 256]
    shapes = [(3, 32, 8, 1000, 128), (2, 8, 2, 300, 64), (2, 16, 8, 700, 256), (5, 8, 8, 64, 72),
              (2, 32, 2, 600, 256)]
    feats = [{}, dict(seq_lens=True), dict(seq_lens=True, window=100, sink_tokens=4, sinks=True,
                                          alibi=True, cap=25.0), dict(batch_invariant=True)]
    if quick:
        pages, shapes, feats = [1, 16, 17], shapes[:2], feats[:3]
    for P, (B, Hq, Hkv, K, D), layout, f, dtype in itertools.product(
            pages, shapes, ["NHD", "HND"], feats, [torch.bfloat16, torch.float16]):
        if quick and dtype == torch.float16 and layout == "HND":
            continue
        yield dict(P=P, B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, layout=layout, feats=f, dtype=dtype)


def page_lengths(gen, B, K, P):
    """Lengths at page boundaries: 0, 1, P-1, P, P+1 and the longest."""
    pick = [K, 0, 1, P - 1, P, P + 1]
    lens = torch.tensor([min(K, max(0, pick[b % len(pick)])) for b in range(B)], device=DEV,
                        dtype=torch.int32)
    return lens


def run_paged(gen, P, B, Hq, Hkv, K, D, layout, feats, dtype, kv_elem=None, scales=None):
    elem = kv_elem if kv_elem is not None else dtype
    kpool, vpool, table, max_pages, num_pages = build_pool(gen, B, Hkv, K, D, P, layout, elem, True)
    kd, vd = gather(kpool, table, layout, K, P), gather(vpool, table, layout, K, P)
    q = rnd(gen, B, Hq, D, dtype=dtype)
    y, lse = outputs(B, Hq, D, dtype, False)
    scale = 1.0 / math.sqrt(D)
    p = base_params(q, y, B, Hq, Hkv, K, D, scale, dtype)
    set_pool(p, kpool, vpool, table, layout, max_pages, num_pages, P)
    set_lse(p, lse)
    ext, lens, keep = extension_tensors(gen, p, B, Hq, K, feats)
    if feats.get("seq_lens"):
        lens = page_lengths(gen, B, K, P)
        p.seq_lens = ptr(lens)
        keep.append(lens)
    if kv_elem is not None:
        p.kv_dtype = kv_elem
        ks, vs = scales
        if isinstance(ks, torch.Tensor):
            p.k_scales, p.v_scales = ptr(ks), ptr(vs)
            kd = kd * ks.double().reshape(1, Hkv, 1, 1)
            vd = vd * vs.double().reshape(1, Hkv, 1, 1)
        else:
            p.k_scale, p.v_scale = ks, vs
            kd, vd = kd * ks, vd * vs
    ry, rl = reference(q, kd, vd, lens, scale, **ext)
    return check(Case(y=y, lse=lse), p, ry, rl, TOL[dtype])


def fp8_cases(quick):
    shapes = [(2, 32, 8, 4096, 128), (3, 8, 8, 257, 64), (2, 16, 8, 1000, 256), (1, 8, 1, 513, 80),
              (2, 8, 2, 100, 200)]
    if quick:
        shapes = shapes[:3]
    for (B, Hq, Hkv, K, D), kv, dtype, per_head, paged in itertools.product(
            shapes, [F.FP8_E4M3, F.FP8_E5M2], [torch.bfloat16, torch.float16], [False, True],
            [False, True]):
        if quick and per_head and not paged:
            continue
        yield dict(B=B, Hq=Hq, Hkv=Hkv, K=K, D=D, kv=kv, dtype=dtype, per_head=per_head, paged=paged)


def run_fp8(gen, B, Hq, Hkv, K, D, kv, dtype, per_head, paged):
    if per_head:
        scales = (torch.rand(Hkv, generator=gen, device=DEV) + 0.25,
                  torch.rand(Hkv, generator=gen, device=DEV) + 0.25)
    else:
        scales = (0.37, 1.9)
    if paged:
        return run_paged(gen, 16, B, Hq, Hkv, K, D, "NHD", dict(seq_lens=True), dtype, kv, scales)
    q = rnd(gen, B, Hq, D, dtype=dtype)
    k = (rnd(gen, B, Hkv, K, D) * 2).to(FP8[kv])
    v = (rnd(gen, B, Hkv, K, D) * 2).to(FP8[kv])
    y, lse = outputs(B, Hq, D, dtype, False)
    scale = 1.0 / math.sqrt(D)
    p = base_params(q, y, B, Hq, Hkv, K, D, scale, dtype)
    set_kv(p, k, v)
    set_lse(p, lse)
    p.kv_dtype = kv
    kd, vd = k.double(), v.double()
    if per_head:
        p.k_scales, p.v_scales = ptr(scales[0]), ptr(scales[1])
        kd = kd * scales[0].double().reshape(1, Hkv, 1, 1)
        vd = vd * scales[1].double().reshape(1, Hkv, 1, 1)
    else:
        p.k_scale, p.v_scale = scales
        kd, vd = kd * scales[0], vd * scales[1]
    lens = torch.full((B,), K, device=DEV)
    ry, rl = reference(q, kd, vd, lens, scale)
    return check(Case(y=y, lse=lse), p, ry, rl, TOL[dtype])


def bad_cases(quick):
    for P, layout, split, kv in itertools.product([1, 16], ["NHD", "HND"], [False, True],
                                                  [None, F.FP8_E4M3]):
        yield dict(P=P, layout=layout, split=split, kv=kv)


def run_bad(gen, P, layout, split, kv):
    """Sequence 1 has a page id outside the pool, sequence 2 a length past k_len:
    exactly their rows are NaN, the others right; nothing outside the pool is read
    (run this section under compute-sanitizer to see it). An fp8 pool at page 16
    takes the paired whole-tile kernel, at page 1 the per-key one."""
    B, Hq, Hkv, D = 4, 16, 4, 128
    K = 4096 if split else 64
    dtype = torch.bfloat16
    elem = kv if kv is not None else dtype
    kpool, vpool, table, max_pages, num_pages = build_pool(gen, B, Hkv, K, D, P, layout, elem, False)
    kd, vd = gather(kpool, table, layout, K, P), gather(vpool, table, layout, K, P)
    lens = torch.full((B,), K, device=DEV, dtype=torch.int32)
    lens[3] = K // 2
    bad_table = table.clone()
    bad_table[1, max_pages // 2] = num_pages + 7      # outside the pool
    lens_dev = lens.clone()
    lens_dev[2] = K + 1                               # past k_len
    q = rnd(gen, B, Hq, D, dtype=dtype)
    y, lse = outputs(B, Hq, D, dtype, False)
    scale = 1.0 / math.sqrt(D)
    p = base_params(q, y, B, Hq, Hkv, K, D, scale, dtype)
    set_pool(p, kpool, vpool, bad_table, layout, max_pages, num_pages, P)
    set_lse(p, lse)
    p.seq_lens = ptr(lens_dev)
    if kv is not None:
        p.kv_dtype = kv
        p.k_scale, p.v_scale = 0.5, 1.25
        kd, vd = kd * 0.5, vd * 1.25
    ry, rl = reference(q, kd, vd, lens, scale)
    return check(Case(y=y, lse=lse), p, ry, rl, TOL[dtype], nan_rows=[1, 2])


SECTIONS = {
    "plain": (plain_cases, run_plain),
    "wide": (wide_cases, run_plain),
    "features": (feature_cases, run_features),
    "paged": (paged_cases, run_paged),
    "fp8": (fp8_cases, run_fp8),
    "bad": (bad_cases, run_bad),
}


def describe(case):
    out = {}
    for k, v in case.items():
        out[k] = str(v).replace("torch.", "") if isinstance(v, torch.dtype) else v
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--json")
    a = ap.parse_args()
    major, minor = torch.cuda.get_device_capability()
    gen = torch.Generator(device=DEV).manual_seed(1234)
    results, fails = [], 0
    t0 = time.time()
    for name in a.only.split(","):
        cases, run = SECTIONS[name]
        n0, f0, t1 = len(results), fails, time.time()
        for case in cases(a.quick):
            if name == "fp8" and major * 10 + minor < 89:
                continue
            try:
                r = run(gen, **case)
            except Exception as e:  # a harness error is a failure too
                r = {"ok": False, "why": f"{type(e).__name__}: {e}"}
            r.update(section=name, **describe(case))
            results.append(r)
            if not r["ok"]:
                fails += 1
                if fails <= 40:
                    print("FAIL", r, flush=True)
        print(f"{name}: {len(results) - n0} cases, {fails - f0} failed, {time.time() - t1:.0f} s",
              flush=True)
    worst = {}
    for r in results:
        key = f"{r['section']}/{r.get('dtype')}"
        worst[key] = max(worst.get(key, 0.0), r.get("err", 0.0))
    print("worst rel err: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())))
    print(f"grid: {len(results)} cases, {fails} failed, {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f)
    print(f"{len(results) - fails} passed, {fails} failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
