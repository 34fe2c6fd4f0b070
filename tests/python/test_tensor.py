"""TensorRef/TensorMut over addresses and CUDA-array-interface objects (host-only)."""
from __future__ import annotations

import pytest

import flashdecoding as fd
from conftest import FakeCudaArray, addr


def test_address_with_shape_defaults_to_c_order():
    t = fd.TensorRef(addr(0), (2, 3, 4))
    assert t.ptr == addr(0) and t.shape == (2, 3, 4) and t.stride == (12, 4, 1)
    assert t.element is None and t.dtype_name is None


def test_address_needs_shape():
    with pytest.raises(TypeError, match="shape"):
        fd.TensorRef(addr(0))


def test_address_with_dtype():
    assert fd.TensorRef(addr(0), (4,), dtype="bf16").element is fd.ElementKind.BF16
    assert fd.TensorRef(addr(0), (4,), dtype=fd.ElementKind.F16).dtype_name == "float16"


def test_cuda_array_interface_strides_become_elements():
    t = fd.TensorRef(FakeCudaArray(addr(1), (2, 8, 100, 64), "<f2", (2 * 102400, 2 * 64, 2 * 512, 2)))
    assert t.shape == (2, 8, 100, 64) and t.stride == (102400, 64, 512, 1)
    assert t.element is fd.ElementKind.F16 and t.ptr == addr(1)


def test_cuda_array_interface_contiguous_when_strides_none():
    t = fd.TensorRef(FakeCudaArray(addr(1), (3, 5), "<f4"))
    assert t.stride == (5, 1) and t.element is fd.ElementKind.F32


def test_cuda_array_interface_odd_byte_stride_refused():
    with pytest.raises(fd.InvalidProblem, match="not a multiple"):
        fd.TensorRef(FakeCudaArray(addr(1), (3, 5), "<f2", (11, 2)))


def test_masked_arrays_refused():
    with pytest.raises(fd.InvalidProblem, match="masked"):
        fd.TensorRef(FakeCudaArray(addr(1), (3,), mask=object()))


def test_unknown_typestr_kept_for_the_message():
    t = fd.TensorRef(FakeCudaArray(addr(1), (3,), "<c8"))
    assert t.element is None and t.dtype_name == "<c8"


def test_shape_and_stride_given_with_an_array_must_agree():
    arr = FakeCudaArray(addr(1), (2, 4), "<f2")
    assert fd.TensorRef(arr, (2, 4), (4, 1)).shape == (2, 4)
    with pytest.raises(fd.InvalidProblem, match="shape"):
        fd.TensorRef(arr, (4, 2))
    with pytest.raises(fd.InvalidProblem, match="stride"):
        fd.TensorRef(arr, None, (1, 2))
    with pytest.raises(fd.InvalidProblem, match="dtype"):
        fd.TensorRef(arr, dtype="bf16")


def test_producer_stream_of_cuda_array_interface():
    assert fd.TensorRef(FakeCudaArray(addr(1), (2,), stream=1234)).producer_stream() == 1234
    assert fd.TensorRef(FakeCudaArray(addr(1), (2,))).producer_stream() is None
    assert fd.TensorRef(addr(1), (2,)).producer_stream() is None


def test_objects_without_an_array_protocol_are_type_errors():
    with pytest.raises(TypeError, match="__cuda_array_interface__"):
        fd.TensorRef(object())
    with pytest.raises(TypeError):
        fd.TensorRef(True, (1,))


def test_stream_handles():
    from flashdecoding.cuda import Stream, stream_handle

    class TorchLike:
        cuda_stream = 77

    class CupyLike:
        ptr = 88

    class Protocol:
        def __cuda_stream__(self):
            return (0, 99)

    assert stream_handle(None) == 0 and stream_handle(5) == 5
    assert stream_handle(TorchLike()) == 77 and stream_handle(CupyLike()) == 88
    assert stream_handle(Protocol()) == 99
    assert stream_handle(Stream.wrap(42)) == 42 and Stream.legacy().handle == 0
    with pytest.raises(TypeError):
        stream_handle(object())


def test_dtype_names_are_canonical_whatever_names_them():
    np = pytest.importorskip("numpy")
    from flashdecoding.tensor import dtype_name_of

    assert fd.TensorRef(addr(0), (4,), dtype="int32").dtype_name == "int32"
    assert fd.TensorRef(addr(0), (4,), dtype=np.int32).dtype_name == "int32"
    assert fd.TensorRef(addr(0), (4,), dtype="f16").dtype_name == "float16"
    assert fd.TensorRef(addr(0), (4,), dtype="fp8_e4m3").dtype_name == "float8_e4m3fn"
    assert dtype_name_of("torch.float8_e5m2") == "float8_e5m2"
    assert dtype_name_of(np.dtype("float32")) == "float32"
    # an array's own dtype is compared by name
    assert fd.TensorRef(FakeCudaArray(addr(1), (3,), "<i4"), dtype="int32").dtype_name == "int32"
    with pytest.raises(fd.InvalidProblem, match="dtype float32 given, but the array is int32"):
        fd.TensorRef(FakeCudaArray(addr(1), (3,), "<i4"), dtype="float32")


def test_torch_dtype_names_become_ours():
    torch = pytest.importorskip("torch")
    from flashdecoding.tensor import dtype_name_of

    assert dtype_name_of(torch.int32) == "int32"
    assert dtype_name_of(torch.float8_e4m3fn) == "float8_e4m3fn"
    assert fd.TensorRef(addr(0), (2,), dtype=torch.bfloat16).element is fd.ElementKind.BF16


class _HostBase:
    """A stand-in DeviceBuffer over host memory (DeviceView only reads ptr, nbytes and
    to_numpy from its base)."""

    def __init__(self, array):
        self.array = array
        self.ptr = 1 << 40
        self.nbytes = array.nbytes

    def to_numpy(self, stream=None):
        return self.array


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "bfloat16", "float16"])
def test_device_view_to_numpy_for_every_element_type(name):
    np = pytest.importorskip("numpy")
    from flashdecoding.cuda import DeviceView

    kind = fd.ElementKind.parse(name)
    host = np.arange(24, dtype=np.float32).astype(kind.numpy_dtype())
    view = DeviceView(_HostBase(host), (3, 2), (4, 2), 1, kind.numpy_dtype())
    got = view.to_numpy()
    want = host[1:].reshape(-1)[:12].reshape(3, 4)[:, ::2]
    assert got.dtype == kind.numpy_dtype()
    assert np.array_equal(got.astype(np.float32), want.astype(np.float32))
    assert view.element is kind
