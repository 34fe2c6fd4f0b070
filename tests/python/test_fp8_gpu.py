"""GPU tests of fp8 KV caches (e4m3, e5m2) with f16/bf16 queries: the kernel's error
against the float64 reference of the *dequantised* cache (k_fp8 * k_scale) is
bounded like the 16-bit kernels' (2e-3 f16, 1e-2 bf16), with per-tensor and
per-head scales, contiguous and paged caches, the extensions, a long cache, ml_dtypes
DeviceBuffers and torch.float8 tensors. NaN-poisoned outputs, bit-identical repeats.
On a GPU older than SM89 the call is refused naming the device. Skipped without a GPU."""
from __future__ import annotations

import math

import numpy as np
import pytest

import flashdecoding as fd
from flashdecoding import reference
from flashdecoding.cuda import DeviceBuffer
from device_arrays import TOL, host, nan_buf, bits
from conftest import HAS_GPU, gpu

pytestmark = gpu

F16, BF16 = fd.ElementKind.F16, fd.ElementKind.BF16
E4M3, E5M2 = fd.ElementKind.FP8_E4M3, fd.ElementKind.FP8_E5M2
HQ, HKV, D = 16, 4, 128


def _cc():
    major, minor = fd.cuda.compute_capability()
    return major * 10 + minor


def has_fp8() -> bool:
    return HAS_GPU and bool(fd.head_dim_buckets(E4M3)) and _cc() >= 89


# Without a GPU the gpu marker skips (and says so); with one, a build without fp8
# cells or a GPU older than SM89 is a fact of the machine.
needs_fp8 = pytest.mark.skipif(HAS_GPU and not has_fp8(),
                               reason="this build has no fp8 cells or the GPU is older than SM89")


def quantise(x, kind, scale):
    """x / scale stored as fp8 (per tensor: a float; per head: an array along axis 1)."""
    s = np.asarray(scale, np.float32)
    s = s.reshape(1, -1, 1, 1) if s.ndim else s
    return (np.asarray(x, np.float32) / s).astype(kind.numpy_dtype())


def run_twice(dq, dk, dv, q_shape, element, **kw):
    runs = []
    for _ in range(2):
        y, lse = nan_buf(q_shape, element), nan_buf(q_shape[:2])
        fd.flash_decode(dq, dk, dv, out=y, lse=lse, **kw)
        runs.append((y.to_numpy(), lse.to_numpy()))
    assert np.array_equal(bits(runs[0][0]), bits(runs[1][0])), "a repeat gave other bits"
    assert np.array_equal(bits(runs[0][1]), bits(runs[1][1]))
    return runs[0]


def check(y, lse, ref_y, ref_lse, element):
    assert reference.relative_error(y, ref_y) <= TOL[element]
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=2e-3)


@needs_fp8
@pytest.mark.parametrize("q_element", [F16, BF16], ids=lambda e: e.short_name)
@pytest.mark.parametrize("kv", [E4M3, E5M2], ids=lambda e: e.short_name)
@pytest.mark.parametrize("per_head", [False, True], ids=["per_tensor", "per_head"])
@pytest.mark.parametrize("k_len", [1, 257, 4096])
def test_fp8_kernel_error_against_the_dequantised_reference(q_element, kv, per_head, k_len):
    rng = np.random.default_rng(k_len * 4 + int(kv) * 2 + per_head)
    b = 3
    q = host((b, HQ, D), q_element, rng)
    k32 = rng.standard_normal((b, HKV, k_len, D), dtype=np.float32)
    v32 = rng.standard_normal((b, HKV, k_len, D), dtype=np.float32)
    if per_head:
        ks = np.array([0.05, 0.1, 0.25, 0.5], np.float32)
        vs = np.array([0.5, 0.02, 0.1, 1.0], np.float32)
    else:
        ks, vs = np.float32(0.125), np.float32(0.3)
    k8, v8 = quantise(k32, kv, ks), quantise(v32, kv, vs)
    dq, dk, dv = (DeviceBuffer.from_numpy(a) for a in (q, k8, v8))
    assert fd.TensorRef(dk).element is kv
    scales = (dict(k_scale=DeviceBuffer.from_numpy(ks), v_scale=DeviceBuffer.from_numpy(vs))
              if per_head else dict(k_scale=float(ks), v_scale=float(vs)))
    y, lse = run_twice(dq, dk, dv, q.shape, q_element, **scales)
    ref_y, ref_lse = reference.decode(q, k8, v8, D ** -0.5, k_scale=ks.astype(np.float64),
                                      v_scale=vs.astype(np.float64), return_lse=True)
    check(y, lse, ref_y, ref_lse, q_element)


@needs_fp8
@pytest.mark.parametrize("kv", [E4M3, E5M2], ids=lambda e: e.short_name)
def test_fp8_with_every_extension(kv):
    q_element = BF16
    rng = np.random.default_rng(int(kv))
    b, k_len = 5, 1000
    lens = [1000, 0, 1, 300, 777]
    q = host((b, HQ, D), q_element, rng)
    k8 = quantise(rng.standard_normal((b, HKV, k_len, D)), kv, 0.25)
    v8 = quantise(rng.standard_normal((b, HKV, k_len, D)), kv, 0.5)
    sinks = np.linspace(-1, 1, HQ).astype(np.float32)
    slopes = (2.0 ** -np.arange(1, HQ + 1)).astype(np.float32)
    kw = dict(window=200, sink_tokens=4, soft_cap=10.0)
    dev = dict(seq_lens=DeviceBuffer.from_numpy(np.array(lens, np.int32)),
               sink_logits=DeviceBuffer.from_numpy(sinks),
               alibi_slopes=DeviceBuffer.from_numpy(slopes), batch_invariant=True)
    y, lse = run_twice(*(DeviceBuffer.from_numpy(a) for a in (q, k8, v8)), q.shape, q_element,
                       k_scale=0.25, v_scale=0.5, **kw, **dev)
    ref_y, ref_lse = reference.decode(q, k8, v8, D ** -0.5, k_scale=0.25, v_scale=0.5,
                                      seq_lens=lens, sink_logits=sinks.astype(np.float64),
                                      alibi_slopes=slopes.astype(np.float64), return_lse=True,
                                      **kw)
    check(y, lse, ref_y, ref_lse, q_element)


@needs_fp8
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page", [1, 16, 17])
def test_fp8_paged(layout, page):
    q_element, kv = F16, E4M3
    rng = np.random.default_rng(page + (layout == "HND"))
    lens = [0, 1, page - 1, page, page + 1, 300]
    needed = [math.ceil(n / page) for n in lens]
    max_pages, num_pages = max(needed) + 1, sum(needed) + 2
    perm = rng.permutation(num_pages).astype(np.int32)
    table = np.zeros((len(lens), max_pages), np.int32)
    at = 0
    for i, n in enumerate(needed):
        table[i, :n] = perm[at:at + n]
        at += n
    shape = (num_pages, page, HKV, D) if layout == "NHD" else (num_pages, HKV, page, D)
    kp = (rng.standard_normal(shape) * 4).astype(kv.numpy_dtype())
    vp = (rng.standard_normal(shape) * 4).astype(kv.numpy_dtype())
    ks = np.array([0.05, 0.1, 0.2, 0.4], np.float32)
    q = host((len(lens), HQ, D), q_element, rng)
    y, lse = run_twice(*(DeviceBuffer.from_numpy(a) for a in (q, kp, vp)), q.shape, q_element,
                       block_table=DeviceBuffer.from_numpy(table), kv_layout=layout,
                       seq_lens=DeviceBuffer.from_numpy(np.array(lens, np.int32)),
                       k_scale=DeviceBuffer.from_numpy(ks), v_scale=0.25)
    ref_y, ref_lse = reference.decode_paged(q, kp, vp, table, D ** -0.5, seq_lens=lens,
                                            kv_layout=layout, k_scale=ks.astype(np.float64),
                                            v_scale=0.25, return_lse=True)
    check(y, lse, ref_y, ref_lse, q_element)


@needs_fp8
def test_fp8_long_cache_with_a_needle():
    """A long fp8 cache where a few keys carry the weight: P.V accumulation must not
    drift (a peer's fp8 path once collapsed at long K)."""
    q_element, kv = BF16, E4M3
    rng = np.random.default_rng(9)
    k_len = 131072
    q = host((1, 4, D), q_element, rng)
    k32 = rng.standard_normal((1, 1, k_len, D), dtype=np.float32)
    v32 = rng.standard_normal((1, 1, k_len, D), dtype=np.float32)
    # three keys whose logits for query head 0 (about ln K) carry about half its weight
    for j, idx in enumerate((k_len - 1, k_len // 2, 17)):
        k32[0, 0, idx] = q[0, 0].astype(np.float32) * (0.9 + 0.1 * j)
        v32[0, 0, idx] = 3.0 + j
    k8, v8 = quantise(k32, kv, 0.5), quantise(v32, kv, 0.5)
    y, lse = run_twice(*(DeviceBuffer.from_numpy(a) for a in (q, k8, v8)), q.shape, q_element,
                       k_scale=0.5, v_scale=0.5)
    ref_y, ref_lse = reference.decode(q, k8, v8, D ** -0.5, k_scale=0.5, v_scale=0.5,
                                      return_lse=True)
    check(y, lse, ref_y, ref_lse, q_element)


@needs_fp8
def test_torch_float8_tensors():
    torch = pytest.importorskip("torch", reason="PyTorch is not importable")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    rng = np.random.default_rng(10)
    for tdtype, kv in ((torch.float8_e4m3fn, E4M3), (torch.float8_e5m2, E5M2)):
        q = torch.randn(2, HQ, D, device="cuda", dtype=torch.float16)
        k = (torch.randn(2, HKV, 500, D, device="cuda") * 2).to(tdtype)
        v = (torch.randn(2, HKV, 500, D, device="cuda") * 2).to(tdtype)
        ks = torch.tensor(rng.uniform(0.1, 1.0, HKV), dtype=torch.float32, device="cuda")
        y, lse = fd.flash_decode(q, k, v, k_scale=ks, v_scale=0.5, return_lse=True)
        torch.cuda.synchronize()
        assert y.dtype == torch.float16 and lse.dtype == torch.float32
        k_host = k.float().cpu().numpy()  # fp8 values, exactly
        v_host = v.float().cpu().numpy()
        ref_y, ref_lse = reference.decode(q.float().cpu().numpy(), k_host, v_host, D ** -0.5,
                                          k_scale=ks.cpu().numpy().astype(np.float64),
                                          v_scale=0.5, return_lse=True)
        check(y.float().cpu().numpy(), lse.cpu().numpy(), ref_y, ref_lse, F16)
        plan = fd.FlashDecodingPlan.select(None, fd.FlashDecodingDescriptor.new_gqa(
            2, HQ, HKV, 500, D).with_kv(kv))
        assert plan.sku().aux_element is kv


OLD_GPU_WITH_FP8_CELLS = HAS_GPU and bool(fd.head_dim_buckets(E4M3)) and _cc() < 89


@pytest.mark.skipif(not OLD_GPU_WITH_FP8_CELLS,
                    reason="checks the refusal on a GPU older than SM89 (with fp8 cells built)")
def test_fp8_before_sm89_is_refused_naming_the_device():
    q = DeviceBuffer.from_numpy(np.zeros((1, 4, 64), np.float16))
    k = DeviceBuffer.from_numpy(np.zeros((1, 4, 8, 64), np.uint8).view(E4M3.numpy_dtype()))
    y = nan_buf((1, 4, 64), F16)
    with pytest.raises(fd.Unsupported) as info:
        fd.flash_decode(q, k, k, out=y)
    assert "needs compute capability 8.9 or newer" in str(info.value)
    assert f"is sm_{_cc()}" in str(info.value)
    assert np.all(np.isnan(y.to_numpy().astype(np.float32)))
