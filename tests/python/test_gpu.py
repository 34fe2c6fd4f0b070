"""GPU tests: decode against the float64 reference from numpy-filled buffers, CuPy
and PyTorch tensors; f16 and bf16; non-contiguous views; two streams; graphs;
flash_decode with and without `out`. Outputs are poisoned with NaN before every run
and repeats must be bit-identical. Skipped with a reason without a GPU."""
from __future__ import annotations

import gc

import numpy as np
import pytest

import flashdecoding as fd
from flashdecoding import reference
from flashdecoding.cuda import DeviceBuffer, Stream
from conftest import gpu, run_python

pytestmark = gpu

TOL = {fd.ElementKind.F16: 2e-3, fd.ElementKind.BF16: 1e-2}
ELEMENTS = [fd.ElementKind.F16, fd.ElementKind.BF16]

# (B, H_q, H_kv, K_len, D): GQA, MHA, MQA, odd sizes that divide nothing, K = 0 and 1,
# every head_dim bucket, a long cache that splits
CASES = [
    (1, 32, 8, 4096, 128),
    (7, 4, 4, 257, 72),
    (2, 8, 1, 1, 64),
    (3, 16, 2, 1000, 96),
    (2, 64, 4, 33, 80),
    (1, 8, 8, 0, 128),
    (5, 6, 3, 129, 40),
    (1, 32, 8, 20000, 128),
    (16, 32, 8, 512, 64),
]


def host(shape, element, rng, scale=1.0):
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(element.numpy_dtype())


def nan_like(shape, element):
    return np.full(shape, np.nan, dtype=np.float32).astype(element.numpy_dtype())


def bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


def run_plan(plan, q, k, v, y, stream=None):
    ws = DeviceBuffer(plan.workspace_size())
    plan.run(stream, fd.Workspace.borrowed(ws), fd.FlashDecodingArgs(q, k, v, y))
    return ws


@pytest.mark.parametrize("element", ELEMENTS, ids=lambda e: e.short_name)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B%d_H%d_Hkv%d_K%d_D%d" % c)
def test_decode_matches_reference(element, case):
    b, hq, hkv, k_len, d = case
    rng = np.random.default_rng(hash(case) % 2 ** 32)
    desc = fd.FlashDecodingDescriptor.new_gqa(b, hq, hkv, k_len, d, element)
    plan = fd.FlashDecodingPlan.select(None, desc)
    q, k, v = host(desc.q_shape(), element, rng), host(desc.kv_shape(), element, rng), \
        host(desc.kv_shape(), element, rng)
    dq, dk, dv = DeviceBuffer.from_numpy(q), DeviceBuffer.from_numpy(k), DeviceBuffer.from_numpy(v)
    dy = DeviceBuffer.from_numpy(nan_like(desc.y_shape(), element))
    ws = run_plan(plan, dq, dk, dv, dy)
    y = dy.to_numpy()
    assert np.all(np.isfinite(y.astype(np.float32)))
    ref = reference.decode(q, k, v, desc.scale)
    assert reference.relative_error(y, ref) <= TOL[element]
    if k_len == 0:
        assert np.all(y.astype(np.float32) == 0)
    # same inputs, same bits
    for _ in range(2):
        dy.copy_from_numpy(nan_like(desc.y_shape(), element))
        plan.run(None, fd.Workspace.borrowed(ws), fd.FlashDecodingArgs(dq, dk, dv, dy))
        assert np.array_equal(bits(dy.to_numpy()), bits(y))


@pytest.mark.parametrize("element", ELEMENTS, ids=lambda e: e.short_name)
def test_non_contiguous_views(element):
    """NHD cache viewed as [B, H_kv, K, D], padded q and y rows, a slice of a longer cache."""
    b, hq, hkv, k_len, d, k_cap, pad = 3, 8, 2, 300, 64, 512, 8
    rng = np.random.default_rng(7)
    desc = fd.FlashDecodingDescriptor.new_gqa(b, hq, hkv, k_len, d, element)
    plan = fd.FlashDecodingPlan.select(None, desc)
    # k: NHD layout [B, K, H_kv, D]
    k_nhd = host((b, k_len, hkv, d), element, rng)
    kbuf = DeviceBuffer.from_numpy(k_nhd)
    kview = kbuf.view(desc.kv_shape(), (k_len * hkv * d, d, hkv * d, 1))
    # v: the first k_len rows of a cache of k_cap rows, HND
    v_cap = host((b, hkv, k_cap, d), element, rng)
    vbuf = DeviceBuffer.from_numpy(v_cap)
    vview = vbuf.view(desc.kv_shape(), (hkv * k_cap * d, k_cap * d, d, 1))
    # q and y: rows padded to d + pad
    q_pad = host((b, hq, d + pad), element, rng)
    qbuf = DeviceBuffer.from_numpy(q_pad)
    qview = qbuf.view(desc.q_shape(), (hq * (d + pad), d + pad, 1))
    ybuf = DeviceBuffer.from_numpy(nan_like((b, hq, d + pad), element))
    yview = ybuf.view(desc.y_shape(), (hq * (d + pad), d + pad, 1))
    args = fd.FlashDecodingArgs(qview, kview, vview, yview)
    for t, c in ((args.k, (hkv * k_len * d, k_len * d, d, 1)), (args.v, (hkv * k_len * d, k_len * d, d, 1)),
                 (args.q, (hq * d, d, 1)), (args.y, (hq * d, d, 1))):
        assert t.stride != c  # really non-contiguous
    ws = DeviceBuffer(plan.workspace_size())
    plan.run(None, fd.Workspace.borrowed(ws), args)
    y_full = ybuf.to_numpy()
    ref = reference.decode(q_pad[..., :d], k_nhd.transpose(0, 2, 1, 3), v_cap[:, :, :k_len], desc.scale)
    assert reference.relative_error(y_full[..., :d], ref) <= TOL[element]
    assert np.all(np.isnan(y_full[..., d:].astype(np.float32)))  # padding untouched


def test_broadcast_kv_with_stride_zero():
    element = fd.ElementKind.F16
    rng = np.random.default_rng(8)
    desc = fd.FlashDecodingDescriptor.new_gqa(4, 8, 2, 100, 128, element)
    plan = fd.FlashDecodingPlan.select(None, desc)
    q = host(desc.q_shape(), element, rng)
    k1, v1 = host((1, 2, 100, 128), element, rng), host((1, 2, 100, 128), element, rng)
    kb, vb = DeviceBuffer.from_numpy(k1), DeviceBuffer.from_numpy(v1)
    st = (0, 100 * 128, 128, 1)
    dy = DeviceBuffer.from_numpy(nan_like(desc.y_shape(), element))
    run_plan(plan, DeviceBuffer.from_numpy(q), kb.view(desc.kv_shape(), st), vb.view(desc.kv_shape(), st), dy)
    ref = reference.decode(q, np.broadcast_to(k1, desc.kv_shape()), np.broadcast_to(v1, desc.kv_shape()),
                           desc.scale)
    assert reference.relative_error(dy.to_numpy(), ref) <= TOL[element]


def test_two_streams_at_once():
    element = fd.ElementKind.BF16
    rng = np.random.default_rng(9)
    jobs = []
    for shape in [(1, 32, 8, 8192, 128), (4, 16, 4, 3000, 64)]:
        desc = fd.FlashDecodingDescriptor.new_gqa(*shape, element)
        plan = fd.FlashDecodingPlan.select(None, desc)
        q, k, v = (host(desc.q_shape(), element, rng), host(desc.kv_shape(), element, rng),
                   host(desc.kv_shape(), element, rng))
        bufs = [DeviceBuffer.from_numpy(a) for a in (q, k, v)]
        dy = DeviceBuffer.from_numpy(nan_like(desc.y_shape(), element))
        jobs.append((desc, plan, (q, k, v), bufs, dy, DeviceBuffer(plan.workspace_size()), Stream()))
    for _ in range(3):
        for desc, plan, _h, bufs, dy, ws, s in jobs:
            plan.run(s, fd.Workspace.borrowed(ws), fd.FlashDecodingArgs(*bufs, dy))
    for desc, plan, (q, k, v), bufs, dy, ws, s in jobs:
        s.synchronize()
        assert reference.relative_error(dy.to_numpy(stream=s), reference.decode(q, k, v, desc.scale)) \
            <= TOL[element]
        s.close()


def test_cuda_graph_capture_and_replay():
    from flashdecoding.cli import _graph_of
    from flashdecoding.cuda import check, runtime

    element = fd.ElementKind.F16
    rng = np.random.default_rng(10)
    desc = fd.FlashDecodingDescriptor.new_gqa(2, 32, 8, 5000, 128, element)
    plan = fd.FlashDecodingPlan.select(None, desc)
    q, k, v = host(desc.q_shape(), element, rng), host(desc.kv_shape(), element, rng), \
        host(desc.kv_shape(), element, rng)
    args = fd.FlashDecodingArgs(*(DeviceBuffer.from_numpy(a) for a in (q, k, v)),
                                DeviceBuffer.from_numpy(nan_like(desc.y_shape(), element)))
    ws = DeviceBuffer(plan.workspace_size())
    s = Stream()
    graph, exe = _graph_of(s, lambda: plan.run(s, fd.Workspace.borrowed(ws), args))
    rt = runtime()
    check(rt.cudaGraphLaunch(exe, rt.cudaStream_t(s.handle)), "cudaGraphLaunch")
    s.synchronize()
    y = args.y.data.to_numpy()
    assert reference.relative_error(y, reference.decode(q, k, v, desc.scale)) <= TOL[element]
    rt.cudaGraphExecDestroy(exe)
    rt.cudaGraphDestroy(graph)


def test_batch_invariant_preference_gives_the_same_bits_in_any_batch():
    element = fd.ElementKind.BF16
    rng = np.random.default_rng(11)
    big = fd.FlashDecodingDescriptor.new_gqa(5, 32, 8, 9000, 128, element)
    one = fd.FlashDecodingDescriptor.new_gqa(1, 32, 8, 9000, 128, element)
    q, k, v = host(big.q_shape(), element, rng), host(big.kv_shape(), element, rng), \
        host(big.kv_shape(), element, rng)
    outs = []
    for desc, sl in ((big, slice(0, 5)), (one, slice(2, 3))):
        plan = fd.FlashDecodingPlan.select(None, desc, fd.PlanPreference.BATCH_INVARIANT)
        dy = DeviceBuffer.from_numpy(nan_like(desc.y_shape(), element))
        run_plan(plan, *(DeviceBuffer.from_numpy(np.ascontiguousarray(a[sl])) for a in (q, k, v)), dy)
        outs.append(dy.to_numpy())
    assert np.array_equal(bits(outs[0][2:3]), bits(outs[1]))
    assert reference.relative_error(outs[0], reference.decode(q, k, v, big.scale)) <= TOL[element]


def test_run_with_small_workspace_is_refused_on_the_gpu_too():
    desc = fd.FlashDecodingDescriptor.new_gqa(1, 32, 8, 65536, 128, fd.ElementKind.F16)
    plan = fd.FlashDecodingPlan.select(None, desc)
    bufs = [DeviceBuffer.empty(s, "float16") for s in (desc.q_shape(), desc.kv_shape(),
                                                        desc.kv_shape(), desc.y_shape())]
    small = DeviceBuffer(plan.workspace_size() // 2)
    with pytest.raises(fd.WorkspaceTooSmall) as info:
        plan.run(None, fd.Workspace.borrowed(small), fd.FlashDecodingArgs(*bufs))
    assert (info.value.needed, info.value.got) == (plan.workspace_size(), small.nbytes)


def test_flash_decode_with_device_buffers_with_and_without_out():
    element = fd.ElementKind.BF16
    rng = np.random.default_rng(12)
    desc = fd.FlashDecodingDescriptor.new_gqa(2, 16, 4, 777, 128, element)
    q, k, v = host(desc.q_shape(), element, rng), host(desc.kv_shape(), element, rng), \
        host(desc.kv_shape(), element, rng)
    dq, dk, dv = (DeviceBuffer.from_numpy(a) for a in (q, k, v))
    ref = reference.decode(q, k, v, desc.scale)
    y = fd.flash_decode(dq, dk, dv)
    assert isinstance(y, DeviceBuffer) and y.shape == desc.y_shape()
    assert reference.relative_error(y.to_numpy(), ref) <= TOL[element]
    out = DeviceBuffer.from_numpy(nan_like(desc.y_shape(), element))
    assert fd.flash_decode(dq, dk, dv, out=out) is out
    assert np.array_equal(bits(out.to_numpy()), bits(y.to_numpy()))
    out2 = fd.flash_decode(dq, dk, dv, scale=0.01)
    assert reference.relative_error(out2.to_numpy(), reference.decode(q, k, v, 0.01)) <= TOL[element]


def test_plan_queries_on_the_device():
    desc = fd.FlashDecodingDescriptor.new_gqa(1, 32, 8, 4096, 128, fd.ElementKind.BF16)
    plan = fd.FlashDecodingPlan.select(None, desc)
    lp = plan.launch_plan()
    major, minor = fd.cuda.compute_capability()
    assert lp["device_cc"] == major * 10 + minor and lp["num_splits"] >= 1 and lp["num_sms"] > 0
    assert lp["cell_index"] == plan.sku().index
    assert int(plan.dispatch_key().arch) == major * 10 + minor


def test_device_buffer_lifetime():
    with DeviceBuffer(1 << 20) as buf:
        assert buf.ptr != 0
    assert buf.freed and buf.ptr == 0
    buf.free()  # idempotent
    buf2 = DeviceBuffer(1 << 20)
    fin = buf2._finalizer
    del buf2
    gc.collect()
    assert not fin.alive
    with pytest.raises(fd.InvalidPointer):
        fd.TensorRef(buf)


def test_bf16_round_trip():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.arange(-8, 8, 0.5, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(4, 8)
    with DeviceBuffer.from_numpy(a) as buf:
        assert buf.element is fd.ElementKind.BF16
        b = buf.to_numpy()
    assert b.dtype == a.dtype and np.array_equal(bits(a), bits(b))


def test_cli_run_small_shape():
    r = run_python("import sys; from flashdecoding.cli import main; "
                   "sys.exit(main(['run','--k-len','1024','--rotate-mib','64','--iters','3',"
                   "'--repeats','3']))", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout and "us/call" in r.stdout and "GB/s" in r.stdout


# ---------------------------------------------------------------- PyTorch

def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not importable")


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_torch_tensors(dtype_name):
    torch = _torch()
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    dt = getattr(torch, dtype_name)
    element = fd.ElementKind.parse(dtype_name)
    g = torch.Generator(device="cuda").manual_seed(0)
    b, hq, hkv, k_len, d = 3, 32, 8, 1500, 128
    q = torch.randn(b, hq, d, device="cuda", dtype=dt, generator=g)
    # an NHD cache viewed as [B, H_kv, K, D]: non-contiguous
    k = torch.randn(b, k_len, hkv, d, device="cuda", dtype=dt, generator=g).transpose(1, 2)
    v = torch.randn(b, hkv, k_len, d, device="cuda", dtype=dt, generator=g)
    assert not k.is_contiguous() and k.stride() != (hkv * k_len * d, k_len * d, d, 1)
    ref = reference.decode(q.float().cpu().numpy(), k.float().cpu().numpy(),
                           v.float().cpu().numpy(), d ** -0.5)
    y = fd.flash_decode(q, k, v)
    assert isinstance(y, torch.Tensor) and y.dtype == dt and tuple(y.shape) == (b, hq, d)
    torch.cuda.synchronize()
    assert reference.relative_error(y.float().cpu().numpy(), ref) <= TOL[element]
    out = torch.full((b, hq, d), float("nan"), device="cuda", dtype=dt)
    assert fd.flash_decode(q, k, v, out=out) is out
    torch.cuda.synchronize()
    assert torch.equal(out.view(torch.int16), y.view(torch.int16))


def test_torch_on_a_side_stream():
    torch = _torch()
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    s = torch.cuda.Stream()
    b, hq, hkv, k_len, d = 2, 16, 2, 20000, 64
    with torch.cuda.stream(s):
        q = torch.randn(b, hq, d, device="cuda", dtype=torch.float16)
        k = torch.randn(b, hkv, k_len, d, device="cuda", dtype=torch.float16)
        v = torch.randn(b, hkv, k_len, d, device="cuda", dtype=torch.float16)
        y = fd.flash_decode(q, k, v)  # runs on s, after the randn on s
        y2 = fd.flash_decode(q, k, v, stream=s)
    s.synchronize()
    ref = reference.decode(q.float().cpu().numpy(), k.float().cpu().numpy(),
                           v.float().cpu().numpy(), d ** -0.5)
    assert reference.relative_error(y.float().cpu().numpy(), ref) <= TOL[fd.ElementKind.F16]
    assert torch.equal(y.view(torch.int16), y2.view(torch.int16))


def test_torch_wrong_dtype_is_unsupported():
    torch = _torch()
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    q = torch.zeros(1, 4, 64, device="cuda", dtype=torch.float32)
    k = torch.zeros(1, 4, 8, 64, device="cuda", dtype=torch.float32)
    with pytest.raises(fd.Unsupported):
        fd.flash_decode(q, k, k)


# ---------------------------------------------------------------- CuPy

def test_cupy_arrays():
    cp = pytest.importorskip("cupy", reason="CuPy is not importable")
    b, hq, hkv, k_len, d = 2, 8, 2, 700, 96
    rs = cp.random.RandomState(0)
    q = rs.standard_normal((b, hq, d)).astype(cp.float16)
    k = rs.standard_normal((b, k_len, hkv, d)).astype(cp.float16).transpose(0, 2, 1, 3)
    v = rs.standard_normal((b, hkv, k_len, d)).astype(cp.float16)
    assert not k.flags.c_contiguous
    y = fd.flash_decode(q, k, v)
    assert isinstance(y, cp.ndarray) and y.dtype == cp.float16
    cp.cuda.Device().synchronize()
    ref = reference.decode(cp.asnumpy(q), cp.asnumpy(k), cp.asnumpy(v), d ** -0.5)
    assert reference.relative_error(cp.asnumpy(y), ref) <= TOL[fd.ElementKind.F16]
    out = cp.full((b, hq, d), cp.nan, dtype=cp.float16)
    assert fd.flash_decode(q, k, v, out=out) is out
    cp.cuda.Device().synchronize()
    assert cp.array_equal(out.view(cp.uint16), y.view(cp.uint16))


def test_cupy_on_a_stream():
    cp = pytest.importorskip("cupy", reason="CuPy is not importable")
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        q = cp.random.standard_normal((1, 32, 128)).astype(cp.float16)
        k = cp.random.standard_normal((1, 8, 9000, 128)).astype(cp.float16)
        v = cp.random.standard_normal((1, 8, 9000, 128)).astype(cp.float16)
        y = fd.flash_decode(q, k, v, stream=s)
    s.synchronize()
    ref = reference.decode(cp.asnumpy(q), cp.asnumpy(k), cp.asnumpy(v), 128 ** -0.5)
    assert reference.relative_error(cp.asnumpy(y), ref) <= TOL[fd.ElementKind.F16]
