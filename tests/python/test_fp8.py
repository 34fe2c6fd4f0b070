"""Host-only tests of fp8 KV caches: the element kinds, dtype recognition (ml_dtypes,
torch names), the params the library receives (kv_dtype, per-tensor and per-head
scales, 1-byte alignment), and each refusal with its message. Made-up device
addresses; the launch is fd_decode_check (see test_extensions.py)."""
from __future__ import annotations

import pytest

import flashdecoding as fd
from flashdecoding import _capi
from conftest import FakeCudaArray, addr

B, HQ, HKV, K, D = 2, 8, 2, 100, 128
FP8 = [("float8_e4m3fn", fd.ElementKind.FP8_E4M3), ("float8_e5m2", fd.ElementKind.FP8_E5M2)]

pytestmark = pytest.mark.skipif(not fd.head_dim_buckets(fd.ElementKind.FP8_E4M3),
                                reason="this build has no fp8 cells")


def ref(i, shape, dtype, offset=0, stride=None):
    return fd.TensorRef(addr(i) + offset, shape, stride, dtype=dtype)


def call(kv="float8_e4m3fn", q="float16", v=None, k_offset=0, **kwargs):
    return fd.flash_decode(ref(0, (B, HQ, D), q), ref(1, (B, HKV, K, D), kv, k_offset),
                           ref(2, (B, HKV, K, D), v or kv),
                           out=fd.TensorMut(addr(3), (B, HQ, D), dtype=q),
                           workspace=(addr(9), 1 << 24), **kwargs)


@pytest.mark.parametrize("name, kind", FP8)
@pytest.mark.parametrize("q", ["float16", "bfloat16"])
def test_fp8_cache_with_per_tensor_scales(launches, name, kind, q):
    call(name, q, k_scale=0.25, v_scale=4.0)
    p = launches.calls[0]
    assert launches.statuses == [0]
    assert (p.dtype, p.kv_dtype) == (int(fd.ElementKind.parse(q)), int(kind))
    assert (p.k_scale, p.v_scale) == (0.25, 4.0)
    assert _capi.address_of(p.k_scales) == _capi.address_of(p.v_scales) == 0


@pytest.mark.parametrize("name, kind", FP8)
def test_fp8_cache_with_per_head_scales(launches, name, kind):
    call(name, k_scale=ref(5, (HKV,), "float32"), v_scale=ref(6, (HKV,), "float32"))
    p = launches.calls[0]
    assert launches.statuses == [0]
    assert (p.k_scale, p.v_scale) == (0.0, 0.0)
    assert (_capi.address_of(p.k_scales), _capi.address_of(p.v_scales)) == (addr(5), addr(6))


def test_fp8_without_scales_means_one(launches):
    call()
    assert (launches.calls[0].k_scale, launches.calls[0].v_scale) == (0.0, 0.0)
    assert launches.statuses == [0]


def test_fp8_k_and_v_need_one_byte_alignment_only(launches):
    call(k_offset=1)
    assert launches.statuses == [0]
    with pytest.raises(fd.InvalidPointer, match="k = 0x.* is not aligned to 2 bytes"):
        call("float16", k_offset=1)


def test_fp8_with_every_extension_and_paged(launches):
    table = ref(7, (B, 4), "int32")
    pool = (50, 32, HKV, D)
    fd.flash_decode(ref(0, (B, HQ, D), "bfloat16"), ref(1, pool, "float8_e5m2"),
                    ref(2, pool, "float8_e5m2"),
                    out=fd.TensorMut(addr(3), (B, HQ, D), dtype="bfloat16"),
                    block_table=table, seq_lens=ref(8, (B,), "int32"), window=64, sink_tokens=4,
                    sink_logits=ref(10, (HQ,), "float32"), alibi_slopes=ref(11, (HQ,), "float32"),
                    soft_cap=20.0, k_scale=0.5, v_scale=ref(6, (HKV,), "float32"),
                    lse=fd.TensorMut(addr(12), (B, HQ), dtype="float32"),
                    batch_invariant=True, workspace=(addr(9), 1 << 24))
    p = launches.calls[0]
    assert launches.statuses == [0]
    assert p.kv_dtype == int(fd.ElementKind.FP8_E5M2) and p.page_size == 32
    assert p.k_scale == 0.5 and _capi.address_of(p.v_scales) == addr(6)


def test_fp8_plan_reports_the_fp8_cell():
    desc = fd.FlashDecodingDescriptor.new_gqa(B, HQ, HKV, K, D, fd.ElementKind.BF16)
    plan = fd.FlashDecodingPlan.select(None, desc.with_kv(fd.ElementKind.FP8_E4M3, 0.5, 0.5))
    sku = plan.sku()
    assert sku.element is fd.ElementKind.BF16 and sku.aux_element is fd.ElementKind.FP8_E4M3
    assert sku.name == "fd::decode_kernel<fd::Fp8<false>, 128, fd::ContiguousKv>"
    k = plan.dispatch_key()
    assert k.dtype is fd.DType.FP8_E4M3 and k.kernel_name() == sku.name
    # fp8 reads half the bytes of the 16-bit cache
    assert plan.desc.bytes_moved() < desc.bytes_moved()


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(v="float8_e5m2"), fd.InvalidProblem,
     "v has dtype float8_e5m2 but the descriptor's KV element is fp8_e4m3"),
    (dict(q="float8_e4m3fn"), fd.Unsupported, "q has dtype float8_e4m3fn; flash_decode runs"),
    (dict(kv="int8"), fd.Unsupported, "k has dtype int8; k and v must be"),
    (dict(k_scale=0.0), fd.InvalidProblem, "k_scale = 0.0 must be finite and > 0 (None means 1.0)"),
    (dict(v_scale=-2.0), fd.InvalidProblem, "v_scale = -2.0 must be finite and > 0"),
    (dict(k_scale=float("inf")), fd.InvalidProblem, "k_scale = inf must be finite"),
    (dict(k_scale=True), TypeError, "k_scale must be a float or an f32 [H_kv] device array"),
    (dict(k_scale=ref(5, (HQ,), "float32")), fd.InvalidProblem,
     "k_scales: expected float32 [H_kv] = (2,), got float32 (8,)"),
    (dict(v_scale=ref(5, (HKV,), "float16")), fd.InvalidProblem,
     "v_scales: expected float32 [H_kv] = (2,), got float16 (2,)"),
    (dict(k_scale=ref(5, (HKV,), "float32", offset=2)), fd.InvalidPointer,
     "k_scales = 0x"),
    (dict(kv="float16", k_scale=2.0), fd.Unsupported,
     "k_scale is set but the KV cache is f16: scales apply to fp8 KV caches only"),
    (dict(kv="float16", v_scale=ref(5, (HKV,), "float32")), fd.Unsupported,
     "v_scales is set but the KV cache is f16"),
])
def test_fp8_refusals(launches, kwargs, exc, words):
    with pytest.raises(exc) as info:
        call(**kwargs)
    assert words in str(info.value)
    assert all(s != 0 for s in launches.statuses)


def test_per_tensor_and_per_head_scale_together_is_refused_by_the_library():
    desc = fd.FlashDecodingDescriptor.new_gqa(B, HQ, HKV, K, D).with_kv("fp8_e4m3", k_scale=2.0)
    plan = fd.FlashDecodingPlan.select(None, desc)
    args = fd.FlashDecodingArgs(ref(0, (B, HQ, D), "float16"), ref(1, (B, HKV, K, D), "fp8_e4m3"),
                                ref(2, (B, HKV, K, D), "fp8_e4m3"),
                                fd.TensorMut(addr(3), (B, HQ, D), dtype="float16"),
                                k_scales=ref(5, (HKV,), "float32"))
    with pytest.raises(fd.InvalidProblem, match="k_scale = 2 and k_scales are both set"):
        plan.can_implement(args)


def test_plan_checks_the_kv_element_of_the_arrays():
    desc = fd.FlashDecodingDescriptor.new_gqa(B, HQ, HKV, K, D).with_kv(fd.ElementKind.FP8_E5M2)
    plan = fd.FlashDecodingPlan.select(None, desc)
    args = fd.FlashDecodingArgs(ref(0, (B, HQ, D), "float16"), ref(1, (B, HKV, K, D), "float16"),
                                ref(2, (B, HKV, K, D), "float16"),
                                fd.TensorMut(addr(3), (B, HQ, D), dtype="float16"))
    with pytest.raises(fd.InvalidProblem,
                       match="k has dtype float16 but the descriptor's KV element is fp8_e5m2"):
        plan.can_implement(args)


def test_fp8_names_from_every_source():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import numpy as np

    assert fd.TensorRef(addr(0), (4,), dtype=np.dtype(ml_dtypes.float8_e4m3fn)).element \
        is fd.ElementKind.FP8_E4M3
    assert fd.TensorRef(addr(0), (4,), dtype="fp8_e5m2").dtype_name == "float8_e5m2"
    # a CUDA-array-interface object names no fp8 type: it stays unknown (refused by name)
    t = fd.TensorRef(FakeCudaArray(addr(0), (4,), "|u1"))
    assert t.element is None and t.dtype_name == "uint8"
    torch = pytest.importorskip("torch")
    assert fd.TensorRef(addr(0), (4,), dtype=torch.float8_e5m2).element is fd.ElementKind.FP8_E5M2
    with pytest.raises(fd.InvalidPointer, match="cpu"):
        fd.TensorRef(torch.zeros(4, dtype=torch.float8_e4m3fn))
