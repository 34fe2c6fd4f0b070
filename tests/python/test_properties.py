"""Property tests of the C ABI's refusals, beyond test_python_mirrors_c.py
(which covers descriptors, extents, strides, shapes and workspace sizes over
well-formed, disjoint addresses): here every pointer and the workspace are drawn
too (NULL, odd addresses, y overlapping an input, the workspace overlapping a
tensor, ranges that run past the end of the address space, garbage sizes), the
raw dtype code, and the whole fd_decode_params struct with garbage in every
field including struct_size. Each call is accepted or refused with the
documented status and a message, never a crash; an independent Python oracle
says which. The GPU part: a refused run leaves every buffer byte-for-byte
unchanged."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import flashdecoding as fd
from flashdecoding import _capi, _native
from conftest import addr, contiguous, gpu

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

S_OK, S_INVALID, S_UNSUPPORTED, S_WS, S_POINTER = 0, 1, 2, 3, 4
TOP = 2 ** 64

ELEMENTS = [fd.ElementKind.F16, fd.ElementKind.BF16]
PREFS = [fd.PlanPreference.DEFAULT, fd.PlanPreference.BATCH_INVARIANT]


def _problems():
    return st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3),
                     st.sampled_from([0, 1, 63, 64, 300, 700, 5000]),
                     st.sampled_from([1, 8, 64, 72, 128]), st.sampled_from(ELEMENTS),
                     st.sampled_from(PREFS))


def span_bytes(shape, stride):
    """Bytes from the first to past the last element (2-byte elements)."""
    if any(n <= 0 for n in shape):
        return 0
    last = sum((n - 1) * s for n, s in zip(shape, stride))
    return (last + 1) * 2


def overlaps(a, a_bytes, b, b_bytes):
    if not a or not b or a_bytes <= 0 or b_bytes <= 0:
        return False
    return a < b + b_bytes and b < a + a_bytes


# A pointer for tensor i: NULL, its own aligned region, odd, inside another
# tensor's region, near the end of the address space, or plain garbage.
def _pointer(i):
    return st.one_of(
        st.just(("own", addr(i))),
        st.just(("null", 0)),
        st.just(("odd", addr(i) + 1)),
        st.tuples(st.just("inside"), st.integers(0, 4), st.sampled_from([0, 2, 16, 256, 4096]))
        .map(lambda t: ("inside", addr(t[1]) + t[2])),
        st.sampled_from([("top", TOP - 4096), ("top", TOP - 16), ("low", 16)]),
        st.integers(1, TOP - 1).map(lambda p: ("garbage", p)),
    )


# Most examples spoil at most two of the five pointers, so each refusal rule is
# reached on its own as well as in company.
POINTERS = st.sets(st.integers(0, 4), max_size=2).flatmap(
    lambda bad: st.tuples(*(_pointer(i) if i in bad else st.just(("own", addr(i)))
                            for i in range(5))))


def _c_params(element, pref, desc, ptrs, ws_bytes, strides):
    p = _capi.FdDecodeParams.new()
    p.dtype, p.flags = int(element), pref.flags
    b, h, hkv, k_len, d = desc.c_args()
    p.batch_size, p.num_heads, p.num_kv_heads, p.k_len, p.head_dim = b, h, hkv, k_len, d
    p.scale = desc.scale
    p.q, p.k, p.v, p.y, p.workspace = (x or None for x in ptrs)
    p.workspace_bytes = ws_bytes
    (p.q_stride_b, p.q_stride_h), (p.k_stride_b, p.k_stride_h, p.k_stride_k) = \
        strides["q"][:2], strides["k"][:3]
    (p.v_stride_b, p.v_stride_h, p.v_stride_k), (p.y_stride_b, p.y_stride_h) = \
        strides["v"][:3], strides["y"][:2]
    return p


@SETTINGS
@given(problem=_problems(), ptrs=POINTERS, data=st.data())
def test_any_pointers_and_workspace_are_accepted_or_refused_as_documented(problem, ptrs, data):
    b, g, hkv, k_len, d, element, pref = problem
    h = g * hkv
    desc = fd.FlashDecodingDescriptor.new_gqa(b, h, hkv, k_len, d, element)
    plan = fd.FlashDecodingPlan.select(None, desc, pref)
    needed = plan.workspace_size()
    ws_bytes = data.draw(st.sampled_from(sorted({0, needed, max(needed - 1, 0), needed + 256,
                                                 2 ** 63, TOP - 1})), label="ws_bytes")
    kinds = [k for k, _ in ptrs]
    q, k, v, y, ws = (p for _, p in ptrs)
    shapes = {"q": desc.q_shape(), "k": desc.kv_shape(), "v": desc.kv_shape(), "y": desc.y_shape()}
    strides = {n: contiguous(s) for n, s in shapes.items()}
    args = fd.FlashDecodingArgs(*(fd.TensorRef(p, shapes[n], strides[n], dtype=element)
                                  for p, n in zip((q, k, v), "qkv")),
                                fd.TensorMut(y, shapes["y"], strides["y"], dtype=element))
    workspace = fd.Workspace(ws, ws_bytes)
    try:
        plan.can_implement(args, workspace)
        got = S_OK
    except fd.WorkspaceTooSmall as e:
        got = e.status
        assert (e.needed, e.got) == (needed, ws_bytes)
    except (fd.InvalidPointer, fd.InvalidProblem, fd.Unsupported) as e:
        got = e.status
        assert str(e), "a refusal without a message"
    # The C library answers the same through both of its check entry points.
    lib = _native.lib()
    c_params = _c_params(element, pref, desc, (q, k, v, y, ws), ws_bytes, strides)
    via_params = lib.fd_decode_check(ctypes.byref(c_params))
    params_msg = _native.last_error_message()
    assert via_params == got
    assert (params_msg == "") == (got == S_OK)
    if pref is fd.PlanPreference.DEFAULT:
        plain = lib.fd_flash_decoding_check(
            int(element), q or None, k or None, v or None, y or None, ws or None, ws_bytes,
            b, h, hkv, k_len, d, *strides["q"][:2], *strides["k"][:3], *strides["v"][:3],
            *strides["y"][:2], desc.scale)
        assert (plain, _native.last_error_message()) == (via_params, params_msg)

    # The oracle, in the documented order: workspace size, then pointers.
    spans = {n: span_bytes(shapes[n], strides[n]) for n in "qkvy"}
    ptr = dict(zip("qkvy", (q, k, v, y)))
    if ws_bytes < needed:
        assert got == S_WS
        return
    assert got != S_WS
    expect_refusal = (
        not q or not y or (k_len > 0 and (not k or not v))
        or any(p % 2 for p in (q, k, v, y) if p)
        or (ws and ws % 16)
        or (needed > 0 and not ws)
        or any(ptr[n] and ptr[n] + spans[n] > TOP for n in "qkvy")
        or (needed and ws and ws + needed > TOP)
        or any(overlaps(y, spans["y"], ptr[n], spans[n]) for n in "qkv")
        or (needed > 0 and any(overlaps(ws, needed, ptr[n], spans[n]) for n in "qkvy")))
    if expect_refusal:
        assert got == S_POINTER, f"expected a pointer refusal for {kinds}: got {got}"
    else:
        assert got == S_OK, f"refused ({got}: {params_msg}) for {kinds}"


@SETTINGS
@given(dtype=st.one_of(st.integers(-(2 ** 31), 2 ** 31 - 1), st.integers(-2, 8)))
def test_raw_dtype_codes(dtype):
    lib = _native.lib()
    desc = fd.FlashDecodingDescriptor.new_gqa(2, 8, 2, 100, 64, fd.ElementKind.F16)
    strides = {n: contiguous(s) for n, s in (("q", desc.q_shape()), ("k", desc.kv_shape()),
                                             ("v", desc.kv_shape()), ("y", desc.y_shape()))}
    status = lib.fd_flash_decoding_check(
        dtype, addr(0), addr(1), addr(2), addr(3), addr(4), 1 << 30, 2, 8, 2, 100, 64,
        *strides["q"][:2], *strides["k"][:3], *strides["v"][:3], *strides["y"][:2], 0.125)
    message = _native.last_error_message()
    if dtype in (1, 2):
        assert (status, message) == (S_OK, "")
    elif 3 <= dtype <= 6:
        assert status == S_UNSUPPORTED and "not supported" in message
    else:
        assert status == S_INVALID and f"dtype = {dtype}" in message
    assert lib.fd_flash_decoding_check_problem(dtype, 2, 8, 2, 100, 64, 0.125) == status


SIZEOF = ctypes.sizeof(_capi.FdDecodeParams)
OLDEST = _capi.FdDecodeParams.stream.offset + ctypes.sizeof(ctypes.c_void_p)
LIMIT = 1 << 20


@SETTINGS
@given(raw=st.binary(min_size=SIZEOF, max_size=SIZEOF),
       struct_size=st.one_of(st.sampled_from([0, 1, 7, 8, OLDEST - 1, OLDEST, SIZEOF - 4, SIZEOF,
                                              SIZEOF + 8, SIZEOF + 64, LIMIT, LIMIT + 1, TOP - 1]),
                             st.integers(0, TOP - 1)),
       tail=st.binary(max_size=64), zero_ext=st.booleans(), plain_fields=st.booleans())
def test_params_struct_with_garbage_in_every_field(raw, struct_size, tail, zero_ext,
                                                   plain_fields):
    """fd_decode_check / fd_decode_workspace_size on a struct of raw bytes. (Not
    fd_decode: on a GPU an accepted garbage struct would launch on garbage.)"""
    lib = _native.lib()
    alloc = struct_size if SIZEOF < struct_size <= LIMIT else SIZEOF
    buf = (ctypes.c_ubyte * alloc)()
    ctypes.memmove(buf, raw, SIZEOF)
    p = _capi.FdDecodeParams.from_buffer(buf)
    if plain_fields:  # a sensible problem under the garbage, so checks get past the extents
        p.dtype, p.flags = 1, p.flags & 1
        p.batch_size, p.num_heads, p.num_kv_heads, p.k_len, p.head_dim, p.scale = \
            2, 8, 2, 100, 64, 0.125
    if zero_ext:
        ctypes.memset(ctypes.addressof(buf) + OLDEST, 0, SIZEOF - OLDEST)
    p.struct_size = struct_size
    if alloc > SIZEOF:
        body = (tail * (1 + (alloc - SIZEOF) // max(len(tail), 1)))[:alloc - SIZEOF]
        ctypes.memmove(ctypes.addressof(buf) + SIZEOF, body, len(body))
    status = lib.fd_decode_check(ctypes.byref(p))
    message = _native.last_error_message()
    assert status in (S_OK, S_INVALID, S_UNSUPPORTED, S_WS, S_POINTER), status
    assert (message == "") == (status == S_OK)
    if struct_size < OLDEST or struct_size > LIMIT:
        assert status == S_INVALID and "struct_size" in message
    elif struct_size > SIZEOF and any(bytes(buf)[SIZEOF:struct_size]):
        assert status == S_UNSUPPORTED and "does not know that field" in message
    n = ctypes.c_size_t(12345)
    ws_status = lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(n))
    assert ws_status in (S_OK, S_INVALID, S_UNSUPPORTED)
    if status in (S_OK, S_WS, S_POINTER):  # the problem itself passed
        assert ws_status == S_OK
        if status == S_OK:
            assert p.workspace_bytes >= n.value
    if ws_status != S_OK:
        assert n.value == 12345 and _native.last_error_message()


# ------------------------------------------------------------------ GPU

DEFECTS = ["workspace_too_small", "workspace_null", "y_misaligned", "y_overlaps_q",
           "y_overlaps_k", "y_rows_overlap", "negative_stride", "k_null", "workspace_overlaps_y",
           "y_past_end_of_address_space", "scale_nan"]


@gpu
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(problem=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 2),
                         st.sampled_from([1, 100, 700, 5000]), st.sampled_from([64, 72, 128]),
                         st.sampled_from(ELEMENTS), st.sampled_from(PREFS)),
       defect=st.sampled_from(DEFECTS), seed=st.integers(0, 2 ** 32 - 1))
def test_refused_run_leaves_every_buffer_unchanged(problem, defect, seed):
    from flashdecoding.cuda import DeviceBuffer, synchronize

    b, g, hkv, k_len, d, element, pref = problem
    h = g * hkv
    desc = fd.FlashDecodingDescriptor.new_gqa(b, h, hkv, k_len, d, element)
    if defect == "scale_nan":
        desc = desc.with_scale(float("nan"))
    plan = fd.FlashDecodingPlan.select(None, desc, pref) if defect != "scale_nan" else None
    if plan is None:  # a NaN scale is refused at select: nothing to run
        with pytest.raises(fd.InvalidProblem):
            fd.FlashDecodingPlan.select(None, desc, pref)
        return
    needed = plan.workspace_size()
    if defect in ("workspace_too_small", "workspace_null", "workspace_overlaps_y"):
        assume(needed > 0)
    rng = np.random.default_rng(seed)
    slack = 64  # elements around y so shifted / overlapping views stay inside its buffer
    sizes = {"q": b * h * d, "k": b * hkv * k_len * d, "v": b * hkv * k_len * d,
             "y": b * h * d + 2 * slack}
    host = {n: rng.integers(0, 2 ** 16, size=max(sz, 1), dtype=np.uint16) for n, sz in sizes.items()}
    host["ws"] = rng.integers(0, 256, size=max(needed, 16) + 4096, dtype=np.uint8)
    bufs = {n: DeviceBuffer.from_numpy(a) for n, a in host.items()}
    ptr = {n: bufs[n].ptr for n in bufs}
    ptr["y"] += 2 * slack
    shapes = {"q": desc.q_shape(), "k": desc.kv_shape(), "v": desc.kv_shape(), "y": desc.y_shape()}
    strides = {n: contiguous(s) for n, s in shapes.items()}
    ws_ptr, ws_bytes = ptr["ws"], needed
    expected = fd.InvalidPointer
    if defect == "workspace_too_small":
        ws_bytes, expected = needed - 1, fd.WorkspaceTooSmall
    elif defect == "workspace_null":
        ws_ptr = 0
    elif defect == "y_misaligned":
        ptr["y"] += 1
    elif defect == "y_overlaps_q":
        ptr["y"] = ptr["q"]
    elif defect == "y_overlaps_k":
        assume(k_len > 0)
        ptr["y"] = ptr["k"]
    elif defect == "y_rows_overlap":
        assume(b * h > 1)
        strides["y"] = (0, 0, 1)
        expected = fd.InvalidProblem
    elif defect == "negative_stride":
        assume(k_len > 1)
        strides["k"] = (strides["k"][0], strides["k"][1], -d, 1)
        expected = fd.InvalidProblem
    elif defect == "k_null":
        assume(k_len > 0)
        ptr["k"] = 0
    elif defect == "workspace_overlaps_y":
        ws_ptr = (ptr["y"] - 2 * slack + 15) // 16 * 16
    elif defect == "y_past_end_of_address_space":
        # two bytes past the end whatever y's span (ending exactly at 2^64 is legal)
        ptr["y"] = TOP - span_bytes(shapes["y"], strides["y"]) + 2
    args = fd.FlashDecodingArgs(*(fd.TensorRef(ptr[n], shapes[n], strides[n], dtype=element)
                                  for n in "qkv"),
                                fd.TensorMut(ptr["y"], shapes["y"], strides["y"], dtype=element))
    synchronize()
    with pytest.raises(expected) as info:
        plan.run(None, fd.Workspace(ws_ptr, ws_bytes), args)
    assert str(info.value)
    synchronize()
    for n, a in host.items():
        after = bufs[n].to_numpy()
        assert np.array_equal(after.view(np.uint8), a.view(np.uint8)), f"{defect} changed {n}"
    # The same buffers, well used, are written: the comparison above can fail.
    good = fd.FlashDecodingArgs(*(fd.TensorRef(bufs[n].ptr, shapes[n], contiguous(shapes[n]),
                                               dtype=element) for n in "qkv"),
                                fd.TensorMut(bufs["y"].ptr + 2 * slack,
                                             shapes["y"], contiguous(shapes["y"]), dtype=element))
    plan.run(None, fd.Workspace(bufs["ws"].ptr, needed), good)
    synchronize()
    assert not np.array_equal(bufs["y"].to_numpy().view(np.uint8), host["y"].view(np.uint8))


def test_a_range_ending_exactly_at_the_end_of_the_address_space_is_not_past_it():
    """[2^64 - 16, 2^64) is inside the address space; one byte more is not."""
    desc = fd.FlashDecodingDescriptor.new_gqa(1, 4, 2, 0, 1, fd.ElementKind.F16)
    lib = _native.lib()
    def check(q_ptr):
        return lib.fd_flash_decoding_check(1, q_ptr, 0, 0, 1 << 40, 0, 0, 1, 4, 2, 0, 1,
                                           4, 1, 0, 0, 0, 0, 0, 0, 4, 1, desc.scale)
    assert check(TOP - 4 * 2) == 0          # q: 4 heads x 1 element x 2 bytes, ends at 2^64
    assert check(TOP - 4 * 2 + 2) == 4      # one element further: INVALID_POINTER
    assert "past the end of the address space" in _native.lib().fd_last_error_message().decode()
