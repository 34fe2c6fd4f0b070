"""The float64 reference against a direct loop-by-loop definition."""
from __future__ import annotations

import math

import numpy as np
import pytest

from flashdecoding import reference


def naive(q, k, v, scale):
    b, hq, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    y = np.zeros((b, hq, d))
    for bi in range(b):
        for h in range(hq):
            kv = h // g
            logits = [scale * float(np.dot(q[bi, h], k[bi, kv, j])) for j in range(k.shape[2])]
            if not logits:
                continue
            m = max(logits)
            w = [math.exp(x - m) for x in logits]
            s = sum(w)
            for j, wj in enumerate(w):
                y[bi, h] += wj / s * v[bi, kv, j]
    return y


@pytest.mark.parametrize("b, hq, hkv, k_len, d", [(1, 4, 4, 7, 8), (2, 8, 2, 13, 16),
                                                  (3, 6, 1, 5, 4), (1, 2, 1, 1, 3), (2, 4, 2, 0, 8)])
def test_matches_the_definition(b, hq, hkv, k_len, d):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((b, hq, d))
    k = rng.standard_normal((b, hkv, k_len, d))
    v = rng.standard_normal((b, hkv, k_len, d))
    scale = 0.37
    np.testing.assert_allclose(reference.decode(q, k, v, scale), naive(q, k, v, scale),
                               rtol=1e-12, atol=1e-12)


def test_default_scale_and_large_logits_are_stable():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 2, 64)) * 100
    k = rng.standard_normal((1, 2, 9, 64)) * 100
    v = rng.standard_normal((1, 2, 9, 64))
    y = reference.decode(q, k, v)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, naive(q, k, v, 1 / 8), rtol=1e-9, atol=1e-12)


def test_bf16_inputs():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 4, 16)).astype(ml_dtypes.bfloat16)
    k = rng.standard_normal((1, 2, 5, 16)).astype(ml_dtypes.bfloat16)
    v = rng.standard_normal((1, 2, 5, 16)).astype(ml_dtypes.bfloat16)
    y = reference.decode(q, k, v, 0.25)
    np.testing.assert_allclose(y, naive(q.astype(np.float64), k.astype(np.float64),
                                        v.astype(np.float64), 0.25), rtol=1e-12)


def test_refuses_bad_shapes():
    with pytest.raises(ValueError):
        reference.decode(np.zeros((1, 3, 8)), np.zeros((1, 2, 4, 8)), np.zeros((1, 2, 4, 8)), 1.0)
    with pytest.raises(ValueError):
        reference.decode(np.zeros((1, 4, 8)), np.zeros((1, 2, 4, 8)), np.zeros((1, 2, 5, 8)), 1.0)


def test_relative_error():
    ref = np.array([[[1.0, -2.0]]])
    assert reference.relative_error(ref, ref) == 0.0
    assert reference.relative_error(ref + 0.02, ref) == pytest.approx(0.01)
    assert reference.relative_error(np.array([[[np.nan, 0.0]]]), ref) == math.inf
