"""GPU tests of merge_states: decoding two halves of a cache (with their LSEs) and
merging equals decoding the whole, within the reference's tolerance, bit-stably
across repeats; -inf partials (an empty half) weigh nothing; f32 states with NaN and
all-empty rows against the float64 reference merge; any strides; PyTorch tensors.
Skipped without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import flashdecoding as fd
from flashdecoding import reference
from flashdecoding.cuda import DeviceBuffer
from device_arrays import TOL, host, nan_host, bits
from conftest import gpu

pytestmark = gpu

F16, BF16, F32 = fd.ElementKind.F16, fd.ElementKind.BF16, fd.ElementKind.F32
B, HQ, HKV, D = 3, 16, 4, 128


def decode_halves(q, k, v, element, cut, lens_first=None, lens_second=None):
    """Decodes keys [0, cut) and [cut, K) into one [2, B, H, D] states buffer and one
    [2, B, H] lse buffer (each half written through a view)."""
    b, hq, d = q.shape
    dq = DeviceBuffer.from_numpy(q)
    states = DeviceBuffer.from_numpy(nan_host((2, b, hq, d), element))
    lse = DeviceBuffer.from_numpy(nan_host((2, b, hq)))
    for i, (kk, vv, lens) in enumerate(((k[:, :, :cut], v[:, :, :cut], lens_first),
                                        (k[:, :, cut:], v[:, :, cut:], lens_second))):
        y_i = states.view((b, hq, d), (hq * d, d, 1), offset=i * b * hq * d)
        l_i = lse.view((b, hq), (hq, 1), offset=i * b * hq)
        sl = None if lens is None else DeviceBuffer.from_numpy(np.asarray(lens, np.int32))
        fd.flash_decode(dq, DeviceBuffer.from_numpy(np.ascontiguousarray(kk)),
                        DeviceBuffer.from_numpy(np.ascontiguousarray(vv)), out=y_i, lse=l_i,
                        seq_lens=sl)
    return states, lse


@pytest.mark.parametrize("element", [F16, BF16], ids=lambda e: e.short_name)
@pytest.mark.parametrize("k_len, cut", [(2000, 1000), (777, 1), (4096, 4000)])
def test_two_halves_merged_equal_the_whole(element, k_len, cut):
    rng = np.random.default_rng(k_len + cut + int(element))
    q = host((B, HQ, D), element, rng)
    k, v = host((B, HKV, k_len, D), element, rng), host((B, HKV, k_len, D), element, rng)
    states, lse = decode_halves(q, k, v, element, cut)
    runs = []
    for _ in range(3):
        y = DeviceBuffer.from_numpy(nan_host((B, HQ, D), element))
        lo = DeviceBuffer.from_numpy(nan_host((B, HQ)))
        got, got_lse = fd.merge_states(states, lse, out=y, lse_out=lo, return_lse=True)
        assert got is y and got_lse is lo
        runs.append((y.to_numpy(), lo.to_numpy()))
    for y, lo in runs[1:]:
        assert np.array_equal(bits(y), bits(runs[0][0])) and np.array_equal(bits(lo), bits(runs[0][1]))
    y, lo = runs[0]
    ref_y, ref_lse = reference.decode(q, k, v, D ** -0.5, return_lse=True)
    assert reference.relative_error(y, ref_y) <= TOL[element]
    np.testing.assert_allclose(lo, ref_lse, rtol=0, atol=2e-3)
    # and the reference merge of the GPU's own partials agrees with the GPU merge
    ref_merged, ref_merged_lse = reference.merge_states(states.to_numpy(), lse.to_numpy())
    assert reference.relative_error(y, ref_merged) <= TOL[element]
    np.testing.assert_allclose(lo, ref_merged_lse, rtol=0, atol=1e-5)


def test_an_empty_half_weighs_nothing():
    element = F16
    rng = np.random.default_rng(1)
    q = host((B, HQ, D), element, rng)
    k, v = host((B, HKV, 600, D), element, rng), host((B, HKV, 600, D), element, rng)
    # sequence 1 has no keys in the second half, sequence 2 none in the first
    states, lse = decode_halves(q, k, v, element, 300, lens_first=[300, 300, 0],
                                lens_second=[300, 0, 300])
    lse_h = lse.to_numpy()
    assert np.all(lse_h[1, 1] == -np.inf) and np.all(lse_h[0, 2] == -np.inf)
    y, lo = fd.merge_states(states, lse, return_lse=True)
    y, lo = y.to_numpy(), lo.to_numpy()
    s = states.to_numpy()
    assert np.array_equal(bits(y[1]), bits(s[0, 1]))  # only the first half counts
    assert np.array_equal(bits(y[2]), bits(s[1, 2]))
    np.testing.assert_allclose(lo[1], lse_h[0, 1], rtol=1e-6)
    np.testing.assert_allclose(lo[2], lse_h[1, 2], rtol=1e-6)
    ref_y = reference.decode(q, k, v, D ** -0.5, seq_lens=[600, 300, 600])
    ref_y[2] = reference.decode(q[2:], k[2:, :, 300:], v[2:, :, 300:], D ** -0.5)[0]
    assert reference.relative_error(y, ref_y) <= TOL[element]


def test_f32_states_with_nan_and_empty_rows_against_the_reference_merge():
    rng = np.random.default_rng(2)
    n, b, h, d = 4, 2, 3, 200
    s = rng.standard_normal((n, b, h, d)).astype(np.float32)
    lse = (rng.standard_normal((n, b, h)) * 3).astype(np.float32)
    lse[:, 0, 0] = -np.inf            # every state empty: y = 0, lse = -inf
    lse[2, 0, 1] = np.nan             # a NaN lse: the row is NaN
    lse[1:, 1, 2] = -np.inf           # one state left
    y, lo = fd.merge_states(DeviceBuffer.from_numpy(s), DeviceBuffer.from_numpy(lse),
                            return_lse=True)
    y, lo = y.to_numpy(), lo.to_numpy()
    ref_y, ref_lse = reference.merge_states(s, lse)
    assert np.all(y[0, 0] == 0) and lo[0, 0] == -np.inf
    assert np.all(np.isnan(y[0, 1])) and np.isnan(lo[0, 1])
    assert np.array_equal(y[1, 2], s[0, 1, 2])  # one state: itself
    assert lo[1, 2] == pytest.approx(float(lse[0, 1, 2]), rel=1e-6)
    ok = ~np.isnan(ref_lse)
    np.testing.assert_allclose(y[ok], ref_y[ok], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lo[ok], ref_lse[ok], rtol=0, atol=1e-5)


def test_strided_states_and_outputs():
    """States stored [B, N, H, D] (interleaved), lse [H, N, B], a padded output."""
    rng = np.random.default_rng(3)
    n, b, h, d, pad = 3, 2, 4, 64, 8
    s_bnhd = rng.standard_normal((b, n, h, d)).astype(np.float32).astype(BF16.numpy_dtype())
    l_hnb = rng.standard_normal((h, n, b)).astype(np.float32)
    sb, lb = DeviceBuffer.from_numpy(s_bnhd), DeviceBuffer.from_numpy(l_hnb)
    states = sb.view((n, b, h, d), (h * d, n * h * d, d, 1))
    lse = lb.view((n, b, h), (b, 1, n * b))
    ybuf = DeviceBuffer.from_numpy(nan_host((b, h, d + pad), BF16))
    y = ybuf.view((b, h, d), (h * (d + pad), d + pad, 1))
    fd.merge_states(states, lse, out=y)
    got = ybuf.to_numpy()
    ref_y, _ = reference.merge_states(s_bnhd.transpose(1, 0, 2, 3), l_hnb.transpose(1, 2, 0))
    assert reference.relative_error(got[..., :d], ref_y) <= TOL[BF16]
    assert np.all(np.isnan(got[..., d:].astype(np.float32)))


def test_a_refused_merge_writes_nothing():
    s = DeviceBuffer.from_numpy(np.ones((2, 1, 2, 64), np.float16))
    lse = DeviceBuffer.from_numpy(np.zeros((2, 1, 2), np.float16))  # not f32
    y = DeviceBuffer.from_numpy(nan_host((1, 2, 64), F16))
    with pytest.raises(fd.InvalidProblem, match="lse: expected float32"):
        fd.merge_states(s, lse, out=y)
    with pytest.raises(fd.InvalidPointer, match="y overlaps states"):
        fd.merge_states(s, DeviceBuffer.from_numpy(np.zeros((2, 1, 2), np.float32)),
                        out=s.view((1, 2, 64), (128, 64, 1)))
    assert np.all(np.isnan(y.to_numpy().astype(np.float32)))
    assert np.all(s.to_numpy() == 1)


def test_torch_merge_of_cascade_prefix_and_suffix():
    """Shared-prefix (cascade) decoding: one prefix cache for the whole batch
    (broadcast, stride 0) and a per-sequence suffix, merged."""
    torch = pytest.importorskip("torch", reason="PyTorch is not importable")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    g = torch.Generator(device="cuda").manual_seed(4)
    b, prefix, suffix = 4, 1500, 200
    q = torch.randn(b, HQ, D, device="cuda", generator=g).half()
    kp = torch.randn(1, HKV, prefix, D, device="cuda", generator=g).half()
    vp = torch.randn(1, HKV, prefix, D, device="cuda", generator=g).half()
    ks = torch.randn(b, HKV, suffix, D, device="cuda", generator=g).half()
    vs = torch.randn(b, HKV, suffix, D, device="cuda", generator=g).half()
    y1, l1 = fd.flash_decode(q, kp.expand(b, -1, -1, -1), vp.expand(b, -1, -1, -1),
                             return_lse=True)
    y2, l2 = fd.flash_decode(q, ks, vs, return_lse=True)
    y, lse = fd.merge_states(torch.stack([y1, y2]), torch.stack([l1, l2]), return_lse=True)
    torch.cuda.synchronize()
    assert y.dtype == torch.float16 and lse.dtype == torch.float32
    k_all = torch.cat([kp.expand(b, -1, -1, -1), ks], dim=2).float().cpu().numpy()
    v_all = torch.cat([vp.expand(b, -1, -1, -1), vs], dim=2).float().cpu().numpy()
    ref_y, ref_lse = reference.decode(q.float().cpu().numpy(), k_all, v_all, D ** -0.5,
                                      return_lse=True)
    assert reference.relative_error(y.float().cpu().numpy(), ref_y) <= TOL[F16]
    np.testing.assert_allclose(lse.cpu().numpy(), ref_lse, rtol=0, atol=2e-3)
