"""Every refusal of the API, each with the right exception and the C library's words."""
from __future__ import annotations

import dataclasses

import pytest

import flashdecoding as fd
from conftest import HAS_GPU, FakeCudaArray, addr, c_message, contiguous, fake_args

LLAMA = fd.FlashDecodingDescriptor.new_gqa(1, 32, 8, 4096, 128, fd.ElementKind.BF16)


def c_check_problem(lib, d):
    return lib.fd_flash_decoding_check_problem(int(d.element), d.batch_size, d.num_heads,
                                               d.num_kv_heads, d.k_len, d.head_dim, d.scale)


@pytest.mark.parametrize("change, exc, words", [
    (dict(batch_size=0), fd.InvalidProblem, "batch_size = 0"),
    (dict(batch_size=-3), fd.InvalidProblem, "batch_size = -3"),
    (dict(num_heads=0), fd.InvalidProblem, "num_heads = 0"),
    (dict(num_heads=-1), fd.InvalidProblem, "num_heads = -1"),
    (dict(num_kv_heads=0), fd.InvalidProblem, "num_kv_heads = 0"),
    (dict(k_len=-1), fd.InvalidProblem, "k_len = -1"),
    (dict(head_dim=0), fd.InvalidProblem, "head_dim = 0"),
    (dict(head_dim=-64), fd.InvalidProblem, "head_dim = -64"),
    (dict(num_kv_heads=5), fd.InvalidProblem, "not a multiple"),
    (dict(num_heads=12, num_kv_heads=8), fd.InvalidProblem, "not a multiple"),
    (dict(head_dim=257), fd.Unsupported, "head_dim = 257"),
    (dict(head_dim=512), fd.Unsupported, "exceeds the maximum 256"),
    (dict(element=fd.ElementKind.F32), fd.Unsupported, "f32"),
    (dict(element=fd.ElementKind.F64), fd.Unsupported, "f64"),
    (dict(scale=float("inf")), fd.InvalidProblem, "scale"),
    (dict(scale=float("nan")), fd.InvalidProblem, "scale"),
])
def test_select_refuses_with_the_c_message(lib, change, exc, words):
    desc = dataclasses.replace(LLAMA, **change)
    with pytest.raises(exc) as info:
        fd.FlashDecodingPlan.select(None, desc)
    assert words in str(info.value)
    # the same status and the very same message as a C host gets
    status = c_check_problem(lib, desc)
    assert status == info.value.status
    assert c_message() == str(info.value)


@pytest.mark.parametrize("field", ["batch_size", "num_heads", "num_kv_heads", "k_len", "head_dim"])
@pytest.mark.parametrize("value", [2 ** 31, -(2 ** 31) - 1, 2 ** 40])
def test_values_outside_int32_are_refused_not_wrapped(field, value):
    # ctypes would silently wrap 2**32 + 1 to 1; Python refuses instead
    with pytest.raises(fd.InvalidProblem, match=f"{field}={value}"):
        fd.FlashDecodingPlan.select(None, dataclasses.replace(LLAMA, **{field: value}))


def test_non_integer_extent_is_a_type_error():
    with pytest.raises(TypeError):
        fd.FlashDecodingPlan.select(None, dataclasses.replace(LLAMA, batch_size=1.5))


def test_k_len_zero_is_fine():
    plan = fd.FlashDecodingPlan.select(None, dataclasses.replace(LLAMA, k_len=0))
    assert plan.workspace_size() == 0
    assert plan.can_implement(fake_args(plan.desc)) is None


def test_head_dim_max_is_accepted_and_one_more_is_not():
    top = fd.FLASH_DECODING_MAX_D
    assert top == 256
    fd.FlashDecodingPlan.select(None, dataclasses.replace(LLAMA, head_dim=top))
    with pytest.raises(fd.Unsupported):
        fd.FlashDecodingPlan.select(None, dataclasses.replace(LLAMA, head_dim=top + 1))


def test_select_element_other_than_descriptor_is_unsupported():
    with pytest.raises(fd.Unsupported, match="bf16"):
        fd.FlashDecodingPlan.select(None, LLAMA, element=fd.ElementKind.F16)
    assert fd.FlashDecodingPlan.select(None, LLAMA, element=fd.ElementKind.BF16).sku().element \
        is fd.ElementKind.BF16


def test_select_type_errors():
    with pytest.raises(TypeError):
        fd.FlashDecodingPlan.select(None, (1, 32, 8, 4096, 128))
    with pytest.raises(TypeError):
        fd.FlashDecodingPlan.select(None, LLAMA, pref="default")


# ---------------------------------------------------------------- tensors vs descriptor

SMALL = fd.FlashDecodingDescriptor.new_gqa(2, 8, 2, 100, 64, fd.ElementKind.F16)


@pytest.mark.parametrize("name, shape", [
    ("q", (2, 8, 65)), ("q", (2, 9, 64)), ("q", (1, 8, 64)), ("q", (2, 8, 64, 1)),
    ("k", (2, 2, 99, 64)), ("k", (2, 4, 100, 64)), ("k", (2, 2, 100)),
    ("v", (2, 2, 100, 80)), ("v", (3, 2, 100, 64)),
    ("y", (2, 8, 32)), ("y", (2, 2, 64)),
])
def test_shape_mismatch_names_the_tensor_expected_and_actual(name, shape):
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    args = fake_args(SMALL, shapes={name: shape})
    expected = {"q": SMALL.q_shape(), "k": SMALL.kv_shape(), "v": SMALL.kv_shape(),
                "y": SMALL.y_shape()}[name]
    with pytest.raises(fd.InvalidProblem) as info:
        plan.can_implement(args)
    text = str(info.value)
    assert text.startswith(f"{name}:")
    assert str(expected) in text and str(tuple(shape)) in text


@pytest.mark.parametrize("typestr", ["<f4", "<f8", "|i1", "<i4", "|u1"])
def test_array_dtypes_other_than_f16_bf16_are_unsupported(typestr):
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    with pytest.raises(fd.Unsupported, match="float16 or bfloat16"):
        plan.can_implement(fake_args(SMALL, typestr=typestr))


def test_array_of_the_other_half_type_is_invalid():
    bf = dataclasses.replace(SMALL, element=fd.ElementKind.BF16)
    plan = fd.FlashDecodingPlan.select(None, bf)
    args = fake_args(SMALL)  # f16 tensors
    with pytest.raises(fd.InvalidProblem, match="q has dtype float16.*bf16"):
        plan.can_implement(args)


@pytest.mark.parametrize("name", ["q", "k", "v", "y"])
def test_d_axis_must_be_contiguous(name):
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    shape = SMALL.q_shape() if name in "qy" else SMALL.kv_shape()
    stride = list(contiguous(shape))
    stride = [s * 2 for s in stride[:-1]] + [2]
    with pytest.raises(fd.InvalidProblem, match=f"{name}: the D axis stride must be 1"):
        plan.can_implement(fake_args(SMALL, strides={name: tuple(stride)}))


@pytest.mark.parametrize("name, stride_index", [("q", 0), ("k", 1), ("v", 2), ("y", 1)])
def test_negative_strides_refused_by_c(name, stride_index):
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    shape = SMALL.q_shape() if name in "qy" else SMALL.kv_shape()
    stride = list(contiguous(shape))
    stride[stride_index] = -stride[stride_index]
    with pytest.raises(fd.InvalidProblem, match="must be >= 0"):
        plan.can_implement(fake_args(SMALL, strides={name: tuple(stride)}))


def test_overlapping_output_rows_refused():
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    with pytest.raises(fd.InvalidProblem, match="y rows overlap"):
        plan.can_implement(fake_args(SMALL, strides={"y": (64, 0, 1)}))


def test_broadcast_kv_with_stride_zero_is_fine():
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    assert plan.can_implement(fake_args(SMALL, strides={"k": (0, 100 * 64, 64, 1),
                                                        "v": (0, 100 * 64, 64, 1)})) is None


# ---------------------------------------------------------------- pointers

def test_null_pointer_is_invalid_pointer():
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    args = fake_args(SMALL)
    args.q = fd.TensorRef(0, SMALL.q_shape(), dtype="f16")
    with pytest.raises(fd.InvalidPointer, match="q is NULL") as info:
        plan.can_implement(args)
    assert isinstance(info.value, fd.InvalidProblem)  # documented: a subclass
    assert info.value.status == 4


def test_output_overlapping_an_input_is_invalid_pointer():
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    args = fake_args(SMALL)
    args.y = fd.TensorMut(args.q.ptr, SMALL.y_shape(), dtype="f16")
    with pytest.raises(fd.InvalidPointer):
        plan.can_implement(args)


def test_misaligned_pointer_is_invalid_pointer():
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    args = fake_args(SMALL)
    args.k = fd.TensorRef(args.k.ptr + 1, SMALL.kv_shape(), dtype="f16")
    with pytest.raises(fd.InvalidPointer):
        plan.can_implement(args)


def test_read_only_output_is_refused():
    with pytest.raises(fd.InvalidPointer, match="read-only"):
        fd.TensorMut(FakeCudaArray(addr(0), (2, 8, 64), readonly=True))
    # a read-only input is fine
    fd.TensorRef(FakeCudaArray(addr(0), (2, 8, 64), readonly=True))


def test_numpy_arrays_are_refused_as_host_memory():
    np = pytest.importorskip("numpy")
    with pytest.raises(fd.InvalidPointer, match="host memory"):
        fd.TensorRef(np.zeros((2, 8, 64), np.float16))


def test_output_must_be_mut():
    with pytest.raises(TypeError, match="TensorMut"):
        fd.FlashDecodingArgs(fd.TensorRef(addr(0), (1,)), fd.TensorRef(addr(1), (1,)),
                             fd.TensorRef(addr(2), (1,)), fd.TensorRef(addr(3), (1,), dtype="f16"))


# ---------------------------------------------------------------- workspace

NEEDS_WS = fd.FlashDecodingDescriptor.new_gqa(1, 32, 8, 65536, 128, fd.ElementKind.BF16)


def test_split_problem_needs_a_workspace(lib):
    plan = fd.FlashDecodingPlan.select(None, NEEDS_WS)
    needed = plan.workspace_size()
    assert needed > 0
    assert needed == lib.fd_flash_decoding_workspace_size(1, 32, 8, 65536, 128)


def test_missing_workspace_is_workspace_too_small():
    plan = fd.FlashDecodingPlan.select(None, NEEDS_WS)
    with pytest.raises(fd.WorkspaceTooSmall) as info:
        plan.can_implement(fake_args(NEEDS_WS), fd.Workspace.none())
    assert info.value.needed == plan.workspace_size()
    assert info.value.got == 0
    assert str(plan.workspace_size()) in str(info.value)


def test_small_workspace_is_workspace_too_small():
    plan = fd.FlashDecodingPlan.select(None, NEEDS_WS)
    n = plan.workspace_size()
    with pytest.raises(fd.WorkspaceTooSmall) as info:
        plan.can_implement(fake_args(NEEDS_WS), fd.Workspace.borrowed(addr(5), n - 1))
    assert (info.value.needed, info.value.got) == (n, n - 1)
    assert plan.can_implement(fake_args(NEEDS_WS), fd.Workspace.borrowed(addr(5), n)) is None


def test_workspace_numbers_parsed_from_c_message_when_not_given():
    err = fd.errors.error_from_status(
        3, "workspace_bytes = 10 is smaller than the 4096 bytes this problem needs")
    assert isinstance(err, fd.WorkspaceTooSmall) and (err.needed, err.got) == (4096, 10)


def test_run_without_workspace_refused_before_any_gpu_work():
    plan = fd.FlashDecodingPlan.select(None, NEEDS_WS)
    with pytest.raises(fd.WorkspaceTooSmall) as info:
        plan.run(None, None, fake_args(NEEDS_WS))
    assert info.value.got == 0


def test_workspace_borrowed_requires_size_for_address():
    with pytest.raises(TypeError):
        fd.Workspace.borrowed(addr(0))
    ws = fd.Workspace.borrowed(FakeCudaArray(addr(0), (1000,), "|u1"))
    assert (ws.ptr, ws.nbytes) == (addr(0), 1000)
    ws = fd.Workspace.borrowed(FakeCudaArray(addr(0), (10,), "<f4"))
    assert ws.nbytes == 40


# ---------------------------------------------------------------- no GPU

@pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without a GPU")
def test_run_without_gpu_is_cuda_error():
    plan = fd.FlashDecodingPlan.select(None, SMALL)
    ws = fd.Workspace.borrowed(addr(6), plan.workspace_size())
    with pytest.raises(fd.CudaError) as info:
        plan.run(None, ws, fake_args(SMALL))
    assert info.value.status == 5


@pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without a GPU")
def test_device_memory_without_gpu_is_cuda_error():
    with pytest.raises(fd.CudaError, match="no CUDA GPU"):
        fd.cuda.DeviceBuffer(256)
    with pytest.raises(fd.CudaError, match="no CUDA GPU"):
        fd.cuda.Stream()
