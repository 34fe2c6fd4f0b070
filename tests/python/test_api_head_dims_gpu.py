"""GPU tests of head_dim 129..256 (the 160, 192 and 256 buckets, tails masked)
against the float64 reference: D in {136, 160, 192, 200, 256} across the head
configurations 16/8, 8/1 and 32/32, K in {0, 1, 257, 4096}, f16 and bf16,
contiguous and strided caches, with LSE; NaN-poisoned outputs, bit-identical
repeats, padding next to each row left untouched. Skipped without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import flashdecoding as fd
from flashdecoding import reference
from flashdecoding.cuda import DeviceBuffer
from device_arrays import TOL, host, nan_host, bits
from conftest import gpu

pytestmark = gpu

F16, BF16 = fd.ElementKind.F16, fd.ElementKind.BF16
HEADS = [(16, 8), (8, 1), (32, 32)]


@pytest.mark.parametrize("element", [F16, BF16], ids=lambda e: e.short_name)
@pytest.mark.parametrize("k_len", [0, 1, 257, 4096])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: "%d_%d" % h)
@pytest.mark.parametrize("d", [136, 160, 192, 200, 256])
def test_wide_head_dims_match_the_reference(d, heads, k_len, element):
    hq, hkv = heads
    b = 1 if hq == 32 else 2  # keeps the 32/32 D=256 K=4096 case small on the host
    rng = np.random.default_rng(d * 10007 + hq * 101 + k_len + int(element))
    q = host((b, hq, d), element, rng)
    k, v = host((b, hkv, k_len, d), element, rng), host((b, hkv, k_len, d), element, rng)
    dq, dk, dv = (DeviceBuffer.from_numpy(a) for a in (q, k, v))
    runs = []
    for _ in range(2):
        y = DeviceBuffer.from_numpy(nan_host((b, hq, d), element))
        lse = DeviceBuffer.from_numpy(nan_host((b, hq)))
        fd.flash_decode(dq, dk, dv, out=y, lse=lse)
        runs.append((y.to_numpy(), lse.to_numpy()))
    assert np.array_equal(bits(runs[0][0]), bits(runs[1][0]))
    assert np.array_equal(bits(runs[0][1]), bits(runs[1][1]))
    y, lse = runs[0]
    ref_y, ref_lse = reference.decode(q, k, v, d ** -0.5, return_lse=True)
    assert reference.relative_error(y, ref_y) <= TOL[element]
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=2e-3)
    if k_len == 0:
        assert np.all(y.astype(np.float32) == 0) and np.all(lse == -np.inf)


@pytest.mark.parametrize("element", [F16, BF16], ids=lambda e: e.short_name)
@pytest.mark.parametrize("d", [136, 200, 256])
def test_wide_head_dims_strided_and_padded(d, element):
    """NHD cache viewed as [B, H_kv, K, D], q and y rows padded: the padding stays NaN."""
    b, hq, hkv, k_len, pad = 3, 16, 8, 300, 8
    rng = np.random.default_rng(d + int(element))
    k_nhd = host((b, k_len, hkv, d), element, rng)
    v_nhd = host((b, k_len, hkv, d), element, rng)
    q_pad = host((b, hq, d + pad), element, rng)
    kbuf, vbuf, qbuf = (DeviceBuffer.from_numpy(a) for a in (k_nhd, v_nhd, q_pad))
    st = (k_len * hkv * d, d, hkv * d, 1)
    kview = kbuf.view((b, hkv, k_len, d), st)
    vview = vbuf.view((b, hkv, k_len, d), st)
    qview = qbuf.view((b, hq, d), (hq * (d + pad), d + pad, 1))
    ybuf = DeviceBuffer.from_numpy(nan_host((b, hq, d + pad), element))
    yview = ybuf.view((b, hq, d), (hq * (d + pad), d + pad, 1))
    fd.flash_decode(qview, kview, vview, out=yview)
    y_full = ybuf.to_numpy()
    ref = reference.decode(q_pad[..., :d], k_nhd.transpose(0, 2, 1, 3),
                           v_nhd.transpose(0, 2, 1, 3), d ** -0.5)
    assert reference.relative_error(y_full[..., :d], ref) <= TOL[element]
    assert np.all(np.isnan(y_full[..., d:].astype(np.float32)))


def test_head_dim_257_is_refused_and_writes_nothing():
    q = DeviceBuffer.from_numpy(np.zeros((1, 2, 257), np.float16))
    k = DeviceBuffer.from_numpy(np.zeros((1, 2, 4, 257), np.float16))
    y = DeviceBuffer.from_numpy(nan_host((1, 2, 257), F16))
    with pytest.raises(fd.Unsupported, match="head_dim = 257 exceeds the maximum 256"):
        fd.flash_decode(q, k, k, out=y)
    assert np.all(np.isnan(y.to_numpy().astype(np.float32)))


def test_the_plan_reports_the_wide_cells_on_the_device():
    for d, bucket in ((136, 160), (160, 160), (192, 192), (200, 256), (256, 256)):
        desc = fd.FlashDecodingDescriptor.new_gqa(16, 16, 8, 2048, d, BF16)
        plan = fd.FlashDecodingPlan.select(None, desc)
        lp = plan.launch_plan()
        assert plan.sku().head_dim == bucket and lp["cell_index"] == plan.sku().index
        assert lp["ctas"] >= 1 and lp["num_splits"] >= 1
