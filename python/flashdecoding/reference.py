"""numpy float64 reference of the decode and of merge_states, for tests and the
CLI check. It is written from the definitions alone (nothing here calls the
library), and covers every feature the library has:

* per-sequence lengths, a sliding window with StreamingLLM sink tokens, per-head
  sink logits, ALiBi, a logit soft-cap, the LSE;
* fp8 caches, dequantised with per-tensor or per-KV-head scales;
* paged caches: the reference gathers the pages itself from a pool and a block
  table (NHD or HND pages), with the library's rule for bad device data (a
  length outside [0, k_len] or a needed page id outside the pool: NaN row);
* MHA, GQA and MQA.

Logit of key j for query head h of a sequence of length L:
x = scale * q.k_j; x = cap * tanh(x / cap) with a soft-cap; x += slope_h * (j - (L - 1))
with ALiBi. Attended keys: 0..L-1, or with a window W the last W (j >= L - W)
plus the sink tokens j < n. The softmax runs over the attended keys, with
exp(sink_h) added to the denominator when there are sink logits; lse is the
natural log of that denominator (-inf when it is empty).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np

ScaleLike = Union[None, float, np.ndarray]


def _f64(a) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def dequantize(kv, scale: ScaleLike, head_axis: int = 1) -> np.ndarray:
    """kv as float64 times its scale: None = 1, a float (per tensor), or one value
    per KV head (an array along ``head_axis``)."""
    out = _f64(kv)
    if scale is None:
        return out
    s = np.asarray(scale, dtype=np.float64)
    if s.ndim == 0:
        return out * float(s)
    shape = [1] * out.ndim
    shape[head_axis] = s.shape[0]
    return out * s.reshape(shape)


def attended_mask(k_len: int, lengths, window: Optional[int] = None,
                  sink_tokens: int = 0) -> np.ndarray:
    """bool [B, k_len]: key j of sequence b is attended."""
    j = np.arange(k_len)[None, :]
    lens = np.asarray(lengths, dtype=np.int64)[:, None]
    mask = j < lens
    if window is not None:
        mask &= (j >= lens - int(window)) | (j < int(sink_tokens))
    return mask


def decode(q, k, v, scale: Optional[float] = None, *, seq_lens=None,
           window: Optional[int] = None, sink_tokens: int = 0, sink_logits=None,
           alibi_slopes=None, soft_cap: Optional[float] = None, k_scale: ScaleLike = None,
           v_scale: ScaleLike = None, return_lse: bool = False):
    """y[b,h] = softmax(logits) . v[b,h//g] in float64 (see the module doc).

    q [B, H_q, D]; k, v [B, H_kv, K_len, D]; g = H_q / H_kv (MHA, GQA, MQA).
    Any dtype numpy can convert to float64 (bf16 and fp8 as ml_dtypes types).
    ``seq_lens`` [B] are clamped into [0, K_len] (the contiguous-cache rule);
    an empty sequence gives zeros (lse -inf, or its sink logit). scale defaults
    to 1/sqrt(D). Returns y, or (y, lse [B, H_q]) with return_lse.
    """
    q = _f64(q)
    k = dequantize(k, k_scale)
    v = dequantize(v, v_scale)
    if q.ndim != 3 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"expected q [B,H_q,D], k/v [B,H_kv,K,D]; got {q.shape}, {k.shape}, {v.shape}")
    b, hq, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k {k.shape} and v {v.shape} do not match q {q.shape}")
    hkv, k_len = k.shape[1], k.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"num_heads {hq} is not a multiple of num_kv_heads {hkv}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    g = hq // hkv
    lens = (np.full(b, k_len, dtype=np.int64) if seq_lens is None
            else np.clip(np.asarray(seq_lens, dtype=np.int64).reshape(b), 0, k_len))
    mask = attended_mask(k_len, lens, window, sink_tokens)[:, None, :]  # [B, 1, K]
    logits = np.einsum("bngd,bnkd->bngk", q.reshape(b, hkv, g, d), k).reshape(b, hq, k_len)
    logits = logits * float(scale)
    if soft_cap is not None:
        logits = float(soft_cap) * np.tanh(logits / float(soft_cap))
    if alibi_slopes is not None:
        slopes = _f64(alibi_slopes).reshape(1, hq, 1)
        dist = np.arange(k_len)[None, None, :] - (lens[:, None, None] - 1)
        logits = logits + slopes * dist
    logits = np.where(mask, logits, -np.inf)
    sink = (np.full((b, hq), -np.inf) if sink_logits is None
            else np.broadcast_to(_f64(sink_logits).reshape(1, hq), (b, hq)))
    top = np.maximum(logits.max(axis=-1, initial=-np.inf), sink)  # [B, H_q]
    safe_top = np.where(np.isfinite(top), top, 0.0)
    w = np.where(mask, np.exp(logits - safe_top[..., None]), 0.0)
    denom = w.sum(axis=-1) + np.where(np.isfinite(sink), np.exp(sink - safe_top), 0.0)
    num = np.einsum("bngk,bnkd->bngd", w.reshape(b, hkv, g, k_len), v).reshape(b, hq, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(denom[..., None] > 0, num / np.where(denom > 0, denom, 1.0)[..., None], 0.0)
        lse = np.where(denom > 0, safe_top + np.log(np.where(denom > 0, denom, 1.0)), -np.inf)
    return (y, lse) if return_lse else y


def page_geometry(pool, kv_layout: str = "NHD") -> Tuple[int, int, int]:
    """(num_pages, page_size, H_kv) of an NHD [pages, P, H_kv, D] or HND
    [pages, H_kv, P, D] pool."""
    pages, a, b, _d = np.shape(pool)
    if kv_layout.upper() == "NHD":
        return pages, a, b
    if kv_layout.upper() == "HND":
        return pages, b, a
    raise ValueError(f"kv_layout {kv_layout!r} must be 'NHD' or 'HND'")


def gather_pages(pool, block_table, lengths, k_len: int, kv_layout: str = "NHD") -> np.ndarray:
    """[B, H_kv, k_len, D] float64 from a page pool: key j of sequence b is row j % P
    of page block_table[b, j // P]. Keys at or past a sequence's length are zeros
    (never attended); lengths must be valid (see bad_rows)."""
    pool = _f64(pool)
    pages, page_size, hkv = page_geometry(pool, kv_layout)
    table = np.asarray(block_table, dtype=np.int64)
    bsz, d = table.shape[0], pool.shape[3]
    out = np.zeros((bsz, hkv, k_len, d))
    nhd = kv_layout.upper() == "NHD"
    for bi in range(bsz):
        for j in range(int(lengths[bi])):
            page, row = table[bi, j // page_size], j % page_size
            out[bi, :, j] = pool[page, row] if nhd else pool[page, :, row]
    return out


def bad_rows(block_table, lengths, k_len: int, num_pages: int, page_size: int) -> np.ndarray:
    """bool [B]: the library's rule for a paged cache's device data: a length
    outside [0, k_len], or a page id outside [0, num_pages) among the pages the
    length needs, makes that sequence's y and lse NaN."""
    table = np.asarray(block_table, dtype=np.int64)
    lens = np.asarray(lengths, dtype=np.int64)
    bad = np.zeros(table.shape[0], dtype=bool)
    for bi in range(table.shape[0]):
        n = int(lens[bi])
        if n < 0 or n > k_len:
            bad[bi] = True
            continue
        needed = table[bi, :(n + page_size - 1) // page_size]
        bad[bi] = bool(np.any((needed < 0) | (needed >= num_pages)))
    return bad


def decode_paged(q, k_pool, v_pool, block_table, scale: Optional[float] = None, *,
                 seq_lens=None, kv_layout: str = "NHD", k_len: Optional[int] = None,
                 k_scale: ScaleLike = None, v_scale: ScaleLike = None,
                 return_lse: bool = False, **features):
    """decode() over a paged cache: gathers each sequence's keys from the pools
    through ``block_table`` [B, max_pages] (NHD or HND pages), then decodes.
    ``k_len`` (default max_pages * page_size) bounds the lengths; ``seq_lens``
    default to k_len. Rows with bad device data (bad_rows) are NaN, lse too.
    ``features``: window, sink_tokens, sink_logits, alibi_slopes, soft_cap."""
    table = np.asarray(block_table, dtype=np.int64)
    pages, page_size, _hkv = page_geometry(k_pool, kv_layout)
    bsz = table.shape[0]
    if k_len is None:
        k_len = table.shape[1] * page_size
    lens = (np.full(bsz, k_len, dtype=np.int64) if seq_lens is None
            else np.asarray(seq_lens, dtype=np.int64).reshape(bsz))
    bad = bad_rows(table, lens, k_len, pages, page_size)
    good = np.where(bad, 0, lens)
    k = gather_pages(dequantize(k_pool, k_scale, head_axis=2 if kv_layout.upper() == "NHD" else 1),
                     table, good, k_len, kv_layout)
    v = gather_pages(dequantize(v_pool, v_scale, head_axis=2 if kv_layout.upper() == "NHD" else 1),
                     table, good, k_len, kv_layout)
    y, lse = decode(q, k, v, scale, seq_lens=good, return_lse=True, **features)
    y[bad] = np.nan
    lse[bad] = np.nan
    return (y, lse) if return_lse else y


def merge_states(states, lse) -> Tuple[np.ndarray, np.ndarray]:
    """(y [B, H, D], lse [B, H]) in float64 from states [N, B, H, D] and lse [N, B, H]
    (natural log): y = sum w_i y_i / sum w_i with w_i = exp(lse_i - max lse); -inf
    states weigh nothing; all -inf: y = 0, lse = -inf; a NaN lse: NaN row."""
    s = _f64(states)
    l = _f64(lse)
    if s.ndim != 4 or l.shape != s.shape[:3]:
        raise ValueError(f"expected states [N,B,H,D] and lse [N,B,H]; got {s.shape}, {l.shape}")
    nan = np.isnan(l).any(axis=0)
    top = np.where(nan, 0.0, np.max(np.where(np.isnan(l), -np.inf, l), axis=0))
    empty = ~nan & ~np.isfinite(top)
    safe = np.where(np.isfinite(top), top, 0.0)
    w = np.where(np.isfinite(l), np.exp(np.where(np.isfinite(l), l, 0.0) - safe[None]), 0.0)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.einsum("nbh,nbhd->bhd", w, np.where(w[..., None] > 0, s, 0.0))
        y = np.where(total[..., None] > 0, y / np.where(total > 0, total, 1.0)[..., None], 0.0)
        out_lse = safe + np.log(np.where(total > 0, total, 1.0))
    out_lse = np.where(empty, -np.inf, out_lse)
    y[nan] = np.nan
    out_lse[nan] = np.nan
    return y, out_lse


def relative_error(y, ref) -> float:
    """max |y - ref| / max(max |ref|, tiny): the figure the tests bound
    (2e-3 for f16, 1e-2 for bf16). NaN in y gives inf."""
    y = np.asarray(y).astype(np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if y.shape != ref.shape:
        raise ValueError(f"shapes differ: {y.shape} vs {ref.shape}")
    if y.size == 0:
        return 0.0
    if not np.all(np.isfinite(y)):
        return math.inf
    return float(np.max(np.abs(y - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
