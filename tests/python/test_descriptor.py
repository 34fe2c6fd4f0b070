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
    assert sku.name == "fd::decode_split_kernel<__nv_bfloat16, 128>" and sku.head_dim == 128
    assert sku.max_group_per_cta >= 1
    g = plan.precision()
    assert g == fd.PrecisionGuarantee(math_precision=fd.ElementKind.BF16,
                                      accumulator=fd.ElementKind.F32,
                                      bit_stable_on_same_hardware=True, deterministic=True)


@pytest.mark.parametrize("d, bucket", [(1, 64), (63, 64), (64, 64), (65, 80), (72, 80),
                                       (81, 96), (96, 96), (100, 128), (128, 128)])
def test_sku_is_the_smallest_bucket_holding_head_dim(d, bucket):
    plan = fd.FlashDecodingPlan.select(None, fd.FlashDecodingDescriptor.new(1, 2, 3, d))
    assert plan.sku().head_dim == bucket


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
    assert fd.FLASH_DECODING_MAX_D == max(c.head_dim for c in fd.kernel_cells()) == 128


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
