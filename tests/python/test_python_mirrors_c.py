"""Property tests that the Python layer mirrors the C library: for any descriptor,
shapes and strides, Python's verdict is C's verbatim (accept both, or refuse with
the same status and message), and its workspace sizes are C's.

The oracle of the first two properties is the C check itself (the Python layer
calls it too), so they catch the layers drifting apart (a refusal Python adds or
drops, a message it rewrites), not errors of the contract; test_properties.py
checks the contract against an independent Python model. What Python checks on
its own (the D-axis stride, strides past int64, tensor shapes) is drawn as well
and checked against the documented message, since the C ABI never sees it."""
from __future__ import annotations

import ctypes

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashdecoding as fd
from flashdecoding import _capi, _native
from conftest import addr, contiguous

INT32 = st.integers(-(2 ** 31), 2 ** 31 - 1)
EXTENT = st.one_of(st.integers(-3, 70), st.sampled_from([0, 1, 255, 4096, 2 ** 31 - 1, 2 ** 31]),
                   INT32)
HEADS = st.one_of(st.integers(-2, 40), INT32)
HEAD_DIM = st.one_of(st.integers(-2, 260), INT32)
SCALE = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                  st.just(0.125))
ELEMENT = st.sampled_from(list(fd.ElementKind))

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def fits_int32(*values):
    return all(-(2 ** 31) <= v < 2 ** 31 for v in values)


@SETTINGS
@given(b=EXTENT, h=HEADS, hkv=HEADS, k_len=EXTENT, d=HEAD_DIM, scale=SCALE, element=ELEMENT)
def test_select_reports_the_c_problem_check_verbatim(b, h, hkv, k_len, d, scale, element):
    lib = _native.lib()
    desc = fd.FlashDecodingDescriptor(b, h, hkv, k_len, d, scale, element)
    try:
        plan = fd.FlashDecodingPlan.select(None, desc)
        py = (0, "")
    except fd.Error as e:
        py = (e.status, str(e))
        plan = None
    if not fits_int32(b, h, hkv, k_len, d):
        assert py[0] == fd.InvalidProblem.status and "int32_t" in py[1]
        return
    status = lib.fd_flash_decoding_check_problem(int(element), b, h, hkv, k_len, d, scale)
    message = _native.last_error_message() if status else ""
    assert py == (status, message)
    if plan is not None:
        assert plan.workspace_size() == lib.fd_flash_decoding_workspace_size(b, h, hkv, k_len, d)
        # the params-struct query agrees with the plain one
        p = _capi.FdDecodeParams.new()
        p.dtype, p.batch_size, p.num_heads, p.num_kv_heads = int(element), b, h, hkv
        p.k_len, p.head_dim, p.scale = k_len, d, scale
        n = ctypes.c_size_t(123)
        assert lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(n)) == 0
        assert n.value == plan.workspace_size()
    elif lib.fd_flash_decoding_check_problem(int(fd.ElementKind.F16), b, h, hkv, k_len, d, 1.0):
        # refused for its extents (the size query sees neither dtype nor scale): no workspace
        assert lib.fd_flash_decoding_workspace_size(b, h, hkv, k_len, d) == 0


def _problems():
    return st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 4),
                     st.integers(0, 300), st.sampled_from([1, 8, 63, 64, 72, 80, 96, 128]),
                     st.sampled_from([fd.ElementKind.F16, fd.ElementKind.BF16]))


STRIDE = st.one_of(st.none(), st.integers(-4, 2 ** 20),
                   st.sampled_from([0, 2 ** 40, 2 ** 62, -2 ** 62, 2 ** 63, -2 ** 63 - 1]))
# The D axis: mostly contiguous, sometimes not (a refusal only Python can give).
D_STRIDE = st.one_of(st.just(1), st.just(1), st.just(1), st.integers(-2, 3))


def python_only_refusal(strides, d):
    """The message of check_args's own stride checks for these strides, tensor by
    tensor in its order (q, k, v, y), or None when they pass to the C check."""
    for name in "qkvy":
        if d > 1 and strides[name][-1] != 1:
            return f"{name}: the D axis stride must be 1 (contiguous), got {strides[name][-1]}"
        for s in strides[name]:
            if not -2 ** 63 <= s < 2 ** 63:
                return f"{name} stride={s} does not fit the C int64_t of the API"
    return None


@SETTINGS
@given(problem=_problems(), data=st.data())
def test_can_implement_reports_the_c_call_check_verbatim(problem, data):
    b, g, hkv, k_len, d, element = problem
    h = g * hkv
    desc = fd.FlashDecodingDescriptor.new_gqa(b, h, hkv, k_len, d, element)
    plan = fd.FlashDecodingPlan.select(None, desc)
    shapes = {"q": desc.q_shape(), "k": desc.kv_shape(), "v": desc.kv_shape(), "y": desc.y_shape()}
    strides = {}
    for name, shape in shapes.items():
        base = list(contiguous(shape))
        drawn = [data.draw(STRIDE, label=f"{name}_stride{i}") for i in range(len(shape) - 1)]
        last = data.draw(D_STRIDE, label=f"{name}_d_stride")
        strides[name] = tuple([base[i] if s is None else s for i, s in enumerate(drawn)] + [last])
    ws_bytes = data.draw(st.sampled_from([0, plan.workspace_size(), max(plan.workspace_size() - 1, 0),
                                          plan.workspace_size() + 4096]), label="ws")
    ws = fd.Workspace(addr(5), ws_bytes) if ws_bytes else fd.Workspace.none()
    tensors = [fd.TensorRef(addr(i), shapes[n], strides[n], dtype=element)
               for i, n in enumerate("qkv")]
    y = fd.TensorMut(addr(3), shapes["y"], strides["y"], dtype=element)
    args = fd.FlashDecodingArgs(*tensors, y)
    try:
        plan.can_implement(args, ws)
        py = (0, "")
    except fd.Error as e:
        py = (e.status, str(e))
        if isinstance(e, fd.WorkspaceTooSmall):
            assert e.needed == plan.workspace_size() and e.got == ws_bytes
    python_only = python_only_refusal(strides, d)
    if python_only is not None:
        assert py == (fd.InvalidProblem.status, python_only)
        return
    s = {n: strides[n] for n in "qkvy"}
    status = _native.lib().fd_flash_decoding_check(
        int(element), addr(0), addr(1), addr(2), addr(3), addr(5) if ws_bytes else None, ws_bytes,
        b, h, hkv, k_len, d, s["q"][0], s["q"][1], s["k"][0], s["k"][1], s["k"][2],
        s["v"][0], s["v"][1], s["v"][2], s["y"][0], s["y"][1], desc.scale)
    message = _native.last_error_message() if status else ""
    assert py == (status, message)


@SETTINGS
@given(problem=_problems(), data=st.data())
def test_any_tensor_shape_is_accepted_or_refused_naming_the_tensor(problem, data):
    b, g, hkv, k_len, d, element = problem
    desc = fd.FlashDecodingDescriptor.new_gqa(b, g * hkv, hkv, k_len, d, element)
    plan = fd.FlashDecodingPlan.select(None, desc)
    expected = {"q": desc.q_shape(), "k": desc.kv_shape(), "v": desc.kv_shape(), "y": desc.y_shape()}
    shapes = {n: tuple(data.draw(st.one_of(st.just(list(s)),
                                           st.lists(st.integers(0, 300), min_size=1, max_size=5)),
                                 label=n))
              for n, s in expected.items()}
    tensors = [fd.TensorRef(addr(i), shapes[n], dtype=element) for i, n in enumerate("qkv")]
    args = fd.FlashDecodingArgs(*tensors, fd.TensorMut(addr(3), shapes["y"], dtype=element))
    wrong = [n for n in "qkvy" if shapes[n] != expected[n]]
    try:
        plan.can_implement(args)
    except fd.InvalidProblem as e:
        assert wrong, f"refused matching shapes: {e}"
        first = wrong[0]
        assert str(e) == f"{first}: expected shape {expected[first]}, got {shapes[first]}"
    else:
        assert not wrong
