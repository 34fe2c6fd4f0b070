"""numpy float64 reference of the decode, for tests and the CLI check."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def decode(q, k, v, scale: Optional[float] = None) -> np.ndarray:
    """y[b,h] = softmax(scale * q[b,h] . k[b,h//g]^T) . v[b,h//g] in float64.

    q [B, H_q, D]; k, v [B, H_kv, K_len, D]; g = H_q / H_kv (MHA, GQA, MQA).
    Any dtype numpy can convert to float64 (bf16 as ml_dtypes.bfloat16).
    K_len == 0 gives zeros. scale defaults to 1/sqrt(D).
    """
    q = np.asarray(q).astype(np.float64)
    k = np.asarray(k).astype(np.float64)
    v = np.asarray(v).astype(np.float64)
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
    if k_len == 0:
        return np.zeros((b, hq, d))
    qg = q.reshape(b, hkv, g, d)
    logits = np.einsum("bngd,bnkd->bngk", qg, k) * float(scale)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=-1, keepdims=True)
    y = np.einsum("bngk,bnkd->bngd", p, v)
    return y.reshape(b, hq, d)


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
