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


# ---------------------------------------------------------------- every feature

def naive_full(q, k, v, scale, lens=None, window=None, sink_tokens=0, sinks=None, slopes=None,
               cap=None):
    """Loop-by-loop definition of every feature: (y, lse)."""
    b, hq, d = q.shape
    hkv, k_len = k.shape[1], k.shape[2]
    g = hq // hkv
    y = np.zeros((b, hq, d))
    lse = np.full((b, hq), -math.inf)
    for bi in range(b):
        n = k_len if lens is None else min(max(int(lens[bi]), 0), k_len)
        keys = [j for j in range(n) if window is None or j >= n - window or j < sink_tokens]
        for h in range(hq):
            kv = h // g
            xs = []
            for j in keys:
                x = scale * float(np.dot(q[bi, h], k[bi, kv, j]))
                if cap is not None:
                    x = cap * math.tanh(x / cap)
                if slopes is not None:
                    x += slopes[h] * (j - (n - 1))
                xs.append(x)
            terms = [math.exp(x) for x in xs]
            denom = sum(terms) + (math.exp(sinks[h]) if sinks is not None else 0.0)
            if denom == 0.0:
                continue
            lse[bi, h] = math.log(denom)
            for j, t in zip(keys, terms):
                y[bi, h] += t / denom * v[bi, kv, j]
    return y, lse


def _small(rng, b=3, hq=4, hkv=2, k_len=9, d=5):
    return (rng.standard_normal((b, hq, d)), rng.standard_normal((b, hkv, k_len, d)),
            rng.standard_normal((b, hkv, k_len, d)))


@pytest.mark.parametrize("features", [
    dict(lens=[9, 4, 0]),
    dict(window=3),
    dict(window=3, sink_tokens=2),
    dict(window=3, sink_tokens=2, lens=[9, 5, 1]),
    dict(window=7, sink_tokens=4, lens=[9, 8, 3]),   # the window reaches the sinks
    dict(sink_tokens=3),                              # no window: every key
    dict(sinks=[0.5, -1.0, 2.0, 0.0]),
    dict(sinks=[0.5, -1.0, 2.0, 0.0], lens=[9, 0, 2]),
    dict(slopes=[0.5, 0.25, 0.125, 1.0], lens=[9, 3, 6]),
    dict(cap=1.5),
    dict(cap=1.5, slopes=[0.5, 0.25, 0.125, 1.0], window=4, sink_tokens=1,
         sinks=[0.1, 0.2, 0.3, 0.4], lens=[7, 9, 2]),
], ids=lambda f: "-".join(sorted(f)))
def test_every_feature_matches_the_definition(features):
    rng = np.random.default_rng(4)
    q, k, v = _small(rng)
    want_y, want_lse = naive_full(q, k, v, 0.7, **features)
    kw = dict(seq_lens=features.get("lens"), window=features.get("window"),
              sink_tokens=features.get("sink_tokens", 0), sink_logits=features.get("sinks"),
              alibi_slopes=features.get("slopes"), soft_cap=features.get("cap"))
    y, lse = reference.decode(q, k, v, 0.7, return_lse=True, **kw)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)


def test_hand_computed_window_and_sink_tokens():
    # D = 1, q = 1, scale 1: logits are the keys; values are 10^j
    q = np.ones((1, 1, 1))
    k = np.array([0.0, 1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 5, 1)
    v = (10.0 ** np.arange(5)).reshape(1, 1, 5, 1)
    y = reference.decode(q, k, v, 1.0, window=2)  # keys 3 and 4
    assert y[0, 0, 0] == pytest.approx((math.e ** 3 * 1e3 + math.e ** 4 * 1e4) / (math.e ** 3 + math.e ** 4))
    y = reference.decode(q, k, v, 1.0, window=2, sink_tokens=1)  # keys 0, 3, 4
    den = 1 + math.e ** 3 + math.e ** 4
    assert y[0, 0, 0] == pytest.approx((1 + math.e ** 3 * 1e3 + math.e ** 4 * 1e4) / den)
    assert reference.attended_mask(5, [5], 2, 1).tolist() == [[True, False, False, True, True]]
    assert reference.attended_mask(5, [3], 2, 2).tolist() == [[True, True, True, False, False]]


def test_hand_computed_sink_logit_alibi_soft_cap_and_lse():
    q = np.zeros((1, 1, 2))
    k = np.zeros((1, 1, 1, 2))
    v = np.full((1, 1, 1, 2), 3.0)
    # one key of logit 0 and a sink logit of 0: half the mass, lse = ln 2
    y, lse = reference.decode(q, k, v, 1.0, sink_logits=[0.0], return_lse=True)
    np.testing.assert_allclose(y, 1.5)
    assert lse[0, 0] == pytest.approx(math.log(2))
    # ALiBi: keys at distance 2, 1, 0 from the last with slope 0.5
    k3 = np.zeros((1, 1, 3, 2))
    v3 = np.array([1.0, 2.0, 4.0]).reshape(1, 1, 3, 1).repeat(2, axis=3)
    y = reference.decode(q, k3, v3, 1.0, alibi_slopes=[0.5])
    w = np.exp([-1.0, -0.5, 0.0])
    assert y[0, 0, 0] == pytest.approx(float(np.dot(w, [1, 2, 4]) / w.sum()))
    # soft-cap: logit 10 capped at 5 -> 5 tanh 2
    q1 = np.array([[[10.0]]])
    k1 = np.array([[[[1.0]], ]]).reshape(1, 1, 1, 1)
    _y, lse = reference.decode(q1, k1, np.ones((1, 1, 1, 1)), 1.0, soft_cap=5.0, return_lse=True)
    assert lse[0, 0] == pytest.approx(5 * math.tanh(2))


def test_empty_sequences():
    rng = np.random.default_rng(5)
    q, k, v = _small(rng, k_len=4)
    y, lse = reference.decode(q, k, v, 1.0, seq_lens=[0, -3, 99], return_lse=True)
    assert np.all(y[:2] == 0) and np.all(lse[:2] == -np.inf)
    np.testing.assert_allclose(y[2], reference.decode(q, k, v, 1.0)[2])  # clamped to 4
    # with sink logits an empty sequence's lse is its sink logit, y stays 0
    y, lse = reference.decode(q, k, v, 1.0, seq_lens=[0, 4, 4], sink_logits=[1, 2, 3, 4],
                              return_lse=True)
    assert np.all(y[0] == 0) and lse[0].tolist() == [1, 2, 3, 4]


def test_fp8_is_dequantised_with_per_tensor_and_per_head_scales():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(6)
    q, k, v = _small(rng)
    for kind in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        k8, v8 = k.astype(kind), v.astype(kind)
        want = naive(q, k8.astype(np.float64) * 0.5, v8.astype(np.float64) * 2.0, 0.3)
        np.testing.assert_allclose(reference.decode(q, k8, v8, 0.3, k_scale=0.5, v_scale=2.0),
                                   want, rtol=1e-12, atol=1e-12)
        ks, vs = np.array([0.5, 4.0]), np.array([2.0, 0.25])
        want = naive(q, k8.astype(np.float64) * ks[None, :, None, None],
                     v8.astype(np.float64) * vs[None, :, None, None], 0.3)
        np.testing.assert_allclose(reference.decode(q, k8, v8, 0.3, k_scale=ks, v_scale=vs),
                                   want, rtol=1e-12, atol=1e-12)
    assert reference.dequantize(np.ones((1, 2, 1, 1)), np.array([2.0, 3.0]))[0, :, 0, 0].tolist() \
        == [2.0, 3.0]


def _pool_from_contiguous(k, page_size, layout, rng, extra_pages=3):
    """A shuffled pool holding k [B, H, K, D] and the block table that finds it."""
    b, h, k_len, d = k.shape
    per_seq = (k_len + page_size - 1) // page_size
    num_pages = b * per_seq + extra_pages
    ids = rng.permutation(num_pages)[:b * per_seq].reshape(b, per_seq)
    pool = rng.standard_normal((num_pages, page_size, h, d))  # garbage where unused
    for bi in range(b):
        for j in range(k_len):
            pool[ids[bi, j // page_size], j % page_size] = k[bi, :, j]
    if layout == "HND":
        pool = pool.transpose(0, 2, 1, 3).copy()
    return pool, ids


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 3, 4, 16])
def test_paged_gather_equals_the_contiguous_cache(layout, page_size):
    rng = np.random.default_rng(page_size)
    q, k, v = _small(rng, k_len=10)
    kp, table = _pool_from_contiguous(k, page_size, layout, np.random.default_rng(1))
    vp, table_v = _pool_from_contiguous(v, page_size, layout, np.random.default_rng(1))
    assert np.array_equal(table, table_v)
    lens = np.array([10, 7, 1])
    got = reference.gather_pages(kp, table, lens, 10, layout)
    for bi, n in enumerate(lens):
        np.testing.assert_array_equal(got[bi, :, :n], k[bi, :, :n])
        assert np.all(got[bi, :, n:] == 0)
    y, lse = reference.decode_paged(q, kp, vp, table, 0.4, seq_lens=lens, kv_layout=layout,
                                    k_len=10, window=4, sink_tokens=1, return_lse=True)
    want_y, want_lse = naive_full(q, k, v, 0.4, lens=lens, window=4, sink_tokens=1)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-12, atol=1e-12)


def test_paged_shared_pages_and_bad_device_data():
    rng = np.random.default_rng(7)
    pool = rng.standard_normal((4, 2, 1, 3))  # 4 pages of 2 keys, NHD
    q = rng.standard_normal((4, 1, 3))
    # sequences 0 and 1 share page 2; 2 has a page id past the pool among its pages;
    # 3 is longer than k_len
    table = np.array([[2, 0], [2, 1], [3, 7], [0, 1]])
    y, lse = reference.decode_paged(q, pool, pool, table, 1.0, seq_lens=[3, 2, 4, 5], k_len=4,
                                    return_lse=True)
    assert reference.bad_rows(table, [3, 2, 4, 5], 4, 4, 2).tolist() == [False, False, True, True]
    assert np.all(np.isnan(y[2:])) and np.all(np.isnan(lse[2:]))
    k0 = np.stack([pool[2, 0, 0], pool[2, 1, 0], pool[0, 0, 0]])[None, None]
    np.testing.assert_allclose(y[0], naive(q[0:1], k0, k0, 1.0)[0], rtol=1e-12)
    k1 = pool[2, :, 0][None, None]
    np.testing.assert_allclose(y[1], naive(q[1:2], k1, k1, 1.0)[0], rtol=1e-12)
    # an id past the pool in an entry the length does not need is fine
    y, _ = reference.decode_paged(q[2:3], pool, pool, table[2:3], 1.0, seq_lens=[2], k_len=4,
                                  return_lse=True)
    assert np.all(np.isfinite(y))


def test_merge_states_of_halves_is_the_whole():
    rng = np.random.default_rng(8)
    q, k, v = _small(rng, k_len=12)
    y_all, lse_all = reference.decode(q, k, v, 0.5, return_lse=True)
    y1, l1 = reference.decode(q, k[:, :, :5], v[:, :, :5], 0.5, return_lse=True)
    y2, l2 = reference.decode(q, k[:, :, 5:], v[:, :, 5:], 0.5, return_lse=True)
    y, lse = reference.merge_states(np.stack([y1, y2]), np.stack([l1, l2]))
    np.testing.assert_allclose(y, y_all, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, lse_all, rtol=1e-12)


def test_merge_states_empty_and_nan_partials():
    s = np.arange(2 * 1 * 3 * 2, dtype=np.float64).reshape(2, 1, 3, 2)
    lse = np.array([[[-np.inf, -np.inf, np.nan]], [[0.5, -np.inf, 1.0]]])
    y, out = reference.merge_states(s, lse)
    np.testing.assert_array_equal(y[0, 0], s[1, 0, 0])  # the -inf state weighs nothing
    assert out[0, 0] == 0.5
    assert np.all(y[0, 1] == 0) and out[0, 1] == -np.inf  # every state empty
    assert np.all(np.isnan(y[0, 2])) and np.isnan(out[0, 2])
    # hand-computed: equal LSEs average, lse + ln 2
    y, out = reference.merge_states(np.array([[[[1.0]]], [[[3.0]]]]), np.zeros((2, 1, 1)))
    assert y[0, 0, 0] == 2.0 and out[0, 0] == pytest.approx(math.log(2))
