"""FlashDecodingDescriptor, plan queries and small value types."""
from __future__ import annotations

import dataclasses
import math

import pytest

import flashdecoding as fd


def test_new_is_mha_with_default_scale():
    d = fd.FlashDecodingDescriptor.new(2, 16, 1000, 64, fd.ElementKind.BF16)
    assert (d.batch_size, d.num_heads, d.num_kv_heads, d.k_len, d.head_dim) == (2, 16, 16, 1000, 64)
    assert d.scale == pytest.approx(1 / 8) and d.element is fd.ElementKind.BF16
    assert d.group_size() == 1


def test_new_gqa_and_group_size():
    d = fd.FlashDecodingDescriptor.new_gqa(1, 32, 8, 4096, 128, fd.ElementKind.F16)
    assert d.group_size() == 4 and d.scale == pytest.approx(1 / math.sqrt(128))
    assert fd.FlashDecodingDescriptor.new_gqa(1, 8, 1, 5, 64).group_size() == 8  # MQA
    assert dataclasses.replace(d, num_kv_heads=0).group_size() == 0


def test_with_scale_returns_a_new_descriptor():
    d = fd.FlashDecodingDescriptor.new(1, 4, 10, 64)
    e = d.with_scale(0.5)
    assert e.scale == 0.5 and d.scale == pytest.approx(0.125) and e is not d
    assert dataclasses.replace(e, scale=d.scale) == d
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.scale = 1.0


def test_element_accepts_names():
    d = fd.FlashDecodingDescriptor(1, 1, 1, 1, 64, 1.0, "bf16")
    assert d.element is fd.ElementKind.BF16
    with pytest.raises(ValueError):
        fd.FlashDecodingDescriptor(1, 1, 1, 1, 64, 1.0, "int8")


def test_bytes_moved_formula():
    d = fd.FlashDecodingDescriptor.new_gqa(1, 32, 8, 4096, 128, fd.ElementKind.BF16)
    assert d.bytes_moved() == 2 * 1 * 8 * 4096 * 128 * 2 + 2 * 1 * 32 * 128 * 2


def test_plan_queries_need_no_gpu():
    d = fd.FlashDecodingDescriptor.new_gqa(4, 32, 8, 8192, 128, fd.ElementKind.BF16)
    plan = fd.FlashDecodingPlan.select(None, d)
    assert plan.backend() is fd.BackendKind.BESPOKE
    sku = plan.sku()
    assert isinstance(sku, fd.KernelSku)
    assert sku.name == "fd::decode_kernel<fd::Identity<__nv_bfloat16>, 128, fd::ContiguousKv>"
    assert sku.head_dim == 128 and sku.max_group_per_cta >= 1
    assert sku.category is fd.OpCategory.ATTENTION and sku.op is fd.AttentionKind.DECODE
    assert sku.element is fd.ElementKind.BF16 and sku.aux_element is None
    assert sku.kv_element is fd.ElementKind.BF16 and not sku.paged
    assert sku.layout is fd.KvLayout.CONTIGUOUS and sku.backend is fd.BackendKind.BESPOKE
    assert isinstance(sku.arch, fd.ArchSku) and sku.arch.min_arch is fd.SmArch.SM80
    g = plan.precision()
    assert g == fd.PrecisionGuarantee(math_precision=fd.MathPrecision.F32,
                                      accumulator=fd.ElementKind.F32,
                                      bit_stable_on_same_hardware=True, deterministic=True)
    assert sku.precision_guarantee == g


@pytest.mark.parametrize("d, bucket", [(1, 64), (63, 64), (64, 64), (65, 80), (72, 80),
                                       (81, 96), (96, 96), (100, 128), (128, 128), (129, 160),
                                       (136, 160), (160, 160), (161, 192), (192, 192),
                                       (200, 256), (256, 256)])
def test_sku_is_the_smallest_bucket_holding_head_dim(d, bucket):
    plan = fd.FlashDecodingPlan.select(None, fd.FlashDecodingDescriptor.new(1, 2, 3, d))
    assert plan.sku().head_dim == bucket
    assert plan.sku().name == f"fd::decode_kernel<fd::Identity<__half>, {bucket}, fd::ContiguousKv>"


def test_paged_descriptor_runs_the_paged_cell_and_sizes_like_contiguous():
    d = fd.FlashDecodingDescriptor.new_paged(4, 32, 8, 128, 16, 64, 300, fd.ElementKind.F16)
    assert d.paged and d.k_len == 16 * 64
    assert d.kv_shape() == (300, 16, 8, 128) and d.kv_shape("HND") == (300, 8, 16, 128)
    assert d.block_table_shape() == (4, 64)
    plan = fd.FlashDecodingPlan.select(None, d)
    assert plan.sku().paged and plan.sku().layout is fd.KvLayout.PAGED
    assert plan.sku().name == "fd::decode_kernel<fd::Identity<__half>, 128, fd::PagedKv>"
    contiguous = fd.FlashDecodingPlan.select(None, fd.FlashDecodingDescriptor.new_gqa(
        4, 32, 8, 16 * 64, 128, fd.ElementKind.F16))
    assert plan.workspace_size() == contiguous.workspace_size()
    assert d.with_paging(16, 64, 300, max_seq_len=100).k_len == 100


@pytest.mark.parametrize("kv", [fd.ElementKind.FP8_E4M3, fd.ElementKind.FP8_E5M2])
@pytest.mark.parametrize("q", [fd.ElementKind.F16, fd.ElementKind.BF16])
def test_fp8_descriptor_plans_the_fp8_cell_for_either_query_type(q, kv):
    if not fd.head_dim_buckets(kv):
        pytest.skip("this build has no fp8 cells")
    d = fd.FlashDecodingDescriptor.new_gqa(2, 16, 4, 1000, 72, q).with_kv(kv, k_scale=0.5)
    assert d.kv is kv and d.k_scale == 0.5 and d.v_scale is None
    plan = fd.FlashDecodingPlan.select(None, d)
    sku = plan.sku()
    assert sku.element is q and sku.aux_element is kv and sku.kv_element is kv
    assert sku.head_dim == 96  # fp8 cells: 64, 96, ...: D = 72 runs 96
    assert sku.min_compute_capability == 89 and sku.arch.min_arch is fd.SmArch.SM89
    flavour = "true" if kv is fd.ElementKind.FP8_E5M2 else "false"
    assert sku.name == f"fd::decode_kernel<fd::Fp8<{flavour}>, 96, fd::ContiguousKv>"
    assert d.bytes_moved() == 2 * 2 * 4 * 1000 * 72 * 1 + 2 * 2 * 16 * 72 * 2


def test_element_kind_fp8_and_names():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import numpy as np

    e4, e5 = fd.ElementKind.FP8_E4M3, fd.ElementKind.FP8_E5M2
    assert (int(e4), int(e5)) == (5, 6) and e4.itemsize == e5.itemsize == 1
    assert e4.numpy_dtype() == np.dtype(ml_dtypes.float8_e4m3fn)
    assert e5.numpy_dtype() == np.dtype(ml_dtypes.float8_e5m2)
    for name in ("float8_e4m3fn", "fp8_e4m3", "e4m3", "torch.float8_e4m3fn"):
        assert fd.ElementKind.parse(name) is e4
    for name in ("float8_e5m2", "fp8_e5m2", "E5M2"):
        assert fd.ElementKind.parse(name) is e5
    assert fd.ElementKind.parse(np.dtype(ml_dtypes.float8_e5m2)) is e5
    assert fd.ElementKind.parse(ml_dtypes.bfloat16) is fd.ElementKind.BF16
    with pytest.raises(ValueError):
        fd.ElementKind.parse("float8_e4m3fnuz")  # not a type this library stores


def test_torch_dtype_names_are_recognised():
    torch = pytest.importorskip("torch")
    assert fd.ElementKind.parse(torch.float8_e4m3fn) is fd.ElementKind.FP8_E4M3
    assert fd.ElementKind.parse(torch.float8_e5m2) is fd.ElementKind.FP8_E5M2
    assert fd.ElementKind.parse(torch.bfloat16) is fd.ElementKind.BF16


@pytest.mark.parametrize("change, words", [
    (dict(window=0), "window = 0 must be None (full attention) or >= 1"),
    (dict(window=-3), "window = -3 must be None"),
    (dict(soft_cap=0.0), "soft_cap = 0.0 must be finite and > 0 (None means off)"),
    (dict(soft_cap=-1.0), "soft_cap = -1.0 must be finite and > 0"),
    (dict(soft_cap=float("inf")), "soft_cap = inf must be finite"),
    (dict(kv_element=fd.ElementKind.FP8_E4M3, k_scale=0.0), "k_scale = 0.0 must be finite and > 0 (None means 1.0)"),
    (dict(kv_element=fd.ElementKind.FP8_E4M3, v_scale=float("nan")), "v_scale = nan must be finite"),
    (dict(window=2 ** 31), "window=2147483648 does not fit"),
    (dict(sink_tokens=2 ** 31), "sink_tokens=2147483648 does not fit"),
])
def test_python_refuses_what_c_reads_as_off(change, words):
    """C reads a window, soft-cap or scale of 0 as "off" / 1.0: Python refuses the
    value rather than run something other than asked."""
    d = dataclasses.replace(fd.FlashDecodingDescriptor.new(1, 4, 10, 64), **change)
    with pytest.raises(fd.InvalidProblem) as info:
        fd.FlashDecodingPlan.select(None, d)
    assert words in str(info.value)


@pytest.mark.parametrize("change, exc, words", [
    (dict(sink_tokens=-1), fd.InvalidProblem, "sink_tokens = -1 must be 0 (off) or >= 1"),
    (dict(k_scale=2.0), fd.Unsupported, "k_scale is set but the KV cache is f16"),
    (dict(kv_element=fd.ElementKind.BF16), fd.Unsupported, "kv_dtype = bf16 with dtype = f16"),
    (dict(kv_element=fd.ElementKind.F32), fd.Unsupported, "kv_dtype = f32"),
    (dict(page_size=16, max_pages=0, num_pages=4), fd.InvalidProblem, "max_pages = 0 must be >= 1"),
    (dict(page_size=0, max_pages=4, num_pages=4), fd.InvalidProblem, "page_size = 0 must be >= 1"),
    (dict(page_size=257, max_pages=4, num_pages=4), fd.Unsupported, "page_size = 257 exceeds the maximum 256"),
    (dict(page_size=16, max_pages=4, num_pages=0), fd.InvalidProblem, "num_pages = 0 must be >= 1"),
    (dict(page_size=1, max_pages=4, num_pages=9), fd.InvalidProblem,
     "k_len = 10 exceeds max_pages * page_size = 4 * 1 = 4 keys"),
])
def test_select_refuses_extension_values_with_the_c_message(change, exc, words):
    d = dataclasses.replace(fd.FlashDecodingDescriptor.new(1, 4, 10, 64), **change)
    with pytest.raises(exc) as info:
        fd.FlashDecodingPlan.select(None, d)
    assert words in str(info.value)
    assert type(info.value) is exc


def test_window_and_sink_tokens_are_accepted():
    d = fd.FlashDecodingDescriptor.new(2, 4, 1000, 64).with_window(128, sink_tokens=4)
    assert (d.window, d.sink_tokens) == (128, 4)
    fd.FlashDecodingPlan.select(None, d)
    fd.FlashDecodingPlan.select(None, d.with_window(None, sink_tokens=4))  # no-op, accepted
    fd.FlashDecodingPlan.select(None, d.with_soft_cap(30.0))


def test_batch_invariant_preference_goes_through_the_params_struct(lib):
    d = fd.FlashDecodingDescriptor.new_gqa(2, 8, 2, 5000, 64, fd.ElementKind.F16)
    plan = fd.FlashDecodingPlan.select(None, d, fd.PlanPreference.BATCH_INVARIANT)
    assert plan.workspace_size() >= 0
    # the library's own limit in that mode reaches Python with its message
    long = dataclasses.replace(d, k_len=2 ** 31 - 1)
    with pytest.raises(fd.Unsupported, match="batch-invariant"):
        fd.FlashDecodingPlan.select(None, long, fd.PlanPreference.BATCH_INVARIANT)
    fd.FlashDecodingPlan.select(None, long)  # fine in the default mode


def test_max_d_comes_from_the_library():
    assert fd.FLASH_DECODING_MAX_D == max(c.head_dim for c in fd.kernel_cells()) == 256


def test_fd_decode_params_mirrors_the_c_struct(lib):
    from flashdecoding import _capi
    import ctypes

    p = _capi.FdDecodeParams.new()
    assert p.struct_size == ctypes.sizeof(_capi.FdDecodeParams)
    assert p.window_size == 0
    # the library accepts exactly our struct size for a valid problem, and refuses a
    # size that cannot be a params struct
    p.dtype, p.batch_size, p.num_heads, p.num_kv_heads, p.k_len, p.head_dim, p.scale = \
        1, 1, 1, 1, 16, 64, 1.0
    n = ctypes.c_size_t()
    assert lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(n)) == 0
    p.struct_size = 8
    assert lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(n)) == 1


def test_status_strings(lib):
    from flashdecoding import _native

    assert _native.status_string(0) == "success"
    assert _native.status_string(3) == "workspace too small"
    assert _native.status_string(999)  # never NULL


@pytest.mark.parametrize("status, cls", [(1, fd.InvalidProblem), (2, fd.Unsupported),
                                         (3, fd.WorkspaceTooSmall), (4, fd.InvalidPointer),
                                         (5, fd.CudaError), (77, fd.Error)])
def test_status_to_exception(status, cls):
    e = fd.errors.error_from_status(status, "message", needed=10, got=2)
    assert type(e) is cls and str(e) == "message" and e.status == status
    assert isinstance(e, fd.Error)


def test_cuda_error_code_parsed_from_c_message():
    e = fd.errors.error_from_status(5, "cudaGetDevice failed: no device (cudaErrorNoDevice, CUDA error 100)")
    assert isinstance(e, fd.CudaError) and e.code == 100
