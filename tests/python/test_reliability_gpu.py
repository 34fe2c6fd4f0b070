"""Reliability: determinism, batch invariance, concurrency, a huge
problem, misuse and several GPUs. GPU tests use PyTorch for memory, streams and
graphs and skip cleanly without a GPU or without torch; the CPU tests (64-bit
overflow refusals, per-thread error messages, host arrays) run everywhere.

Figures (repeats, threads, sizes) are the constants below; README "Reliability"
quotes them."""
from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

import flashdecoding as fd
from flashdecoding import _capi, _native, reference
from conftest import addr, gpu, run_python

REPEATS = 1000
THREADS = 8
HUGE = (1, 8, 8, 2 ** 21 + 256, 128)  # B, H_q, H_kv, K, D: > 2^31 elements (4 GiB as f16) in each of k, v
HUGE_FREE_BYTES = 24 << 30
TOL = {fd.ElementKind.F16: 2e-3, fd.ElementKind.BF16: 1e-2}


# ------------------------------------------------------------------ helpers
def _run_threads(worker):
    """worker(i) for i in range(THREADS), each on its own thread, all joined."""
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not importable")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return torch


def _ref(t, element):
    return fd.TensorRef(t.data_ptr(), tuple(t.shape), t.stride(), dtype=element)


def _args(q, k, v, y, element):
    return fd.FlashDecodingArgs(_ref(q, element), _ref(k, element), _ref(v, element),
                                fd.TensorMut(y.data_ptr(), tuple(y.shape), y.stride(),
                                             dtype=element))


def _inputs(torch, desc, seed, device="cuda"):
    dt = torch.float16 if desc.element is fd.ElementKind.F16 else torch.bfloat16
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(desc.q_shape(), generator=g, device=device, dtype=torch.float32).to(dt)
    k = torch.randn(desc.kv_shape(), generator=g, device=device, dtype=torch.float32).to(dt)
    v = torch.randn(desc.kv_shape(), generator=g, device=device, dtype=torch.float32).to(dt)
    return q, k, v


def _workspace(torch, plan, device="cuda", garbage=False):
    n = max(plan.workspace_size(), 1)
    buf = (torch.randint(0, 255, (n,), dtype=torch.uint8, device=device) if garbage
           else torch.zeros(n, dtype=torch.uint8, device=device))
    return buf, fd.Workspace(buf.data_ptr(), plan.workspace_size())


def _bits(torch, t):
    return t.contiguous().view(torch.int16)


def _stream_handle(s):
    return s.cuda_stream


# ------------------------------------------------------------------ CPU: overflow refusals

def _plain_check(lib, **kw):
    a = dict(dtype=1, q=addr(0), k=addr(1), v=addr(2), y=addr(3), ws=addr(4), ws_bytes=1 << 62,
             b=1, h=8, hkv=8, k_len=16, d=128, qsb=8 * 128, qsh=128, ksb=8 * 16 * 128,
             ksh=16 * 128, ksk=128, vsb=8 * 16 * 128, vsh=16 * 128, vsk=128, ysb=8 * 128,
             ysh=128, scale=0.125)
    a.update(kw)
    st = lib.fd_flash_decoding_check(a["dtype"], a["q"], a["k"], a["v"], a["y"], a["ws"],
                                     a["ws_bytes"], a["b"], a["h"], a["hkv"], a["k_len"], a["d"],
                                     a["qsb"], a["qsh"], a["ksb"], a["ksh"], a["ksk"], a["vsb"],
                                     a["vsh"], a["vsk"], a["ysb"], a["ysh"], a["scale"])
    return st, _native.last_error_message()


@pytest.mark.parametrize("case", [
    # k: (K-1) * k_stride_k alone passes 2^63 elements
    dict(k_len=2 ** 31 - 1, ksk=2 ** 33),
    # k: within int64 as elements, but not as bytes (x 2)
    dict(k_len=2 ** 31 - 1, ksk=2 ** 31 + 7),
    # v: batch axis
    dict(b=3, vsb=2 ** 62, ysb=8 * 128, qsb=8 * 128),
    # q and y: head axis
    dict(h=8, hkv=8, qsh=2 ** 61),
    dict(h=8, hkv=8, ysh=2 ** 61),
    # every axis large: the sum overflows though each term fits
    dict(b=2, hkv=8, h=8, k_len=2, ksb=2 ** 61, ksh=2 ** 58, ksk=2 ** 58),
], ids=["k_len_x_stride", "bytes_only", "v_batch", "q_head", "y_head", "sum_of_terms"])
def test_extents_whose_byte_size_overflows_64_bits_are_refused(case):
    lib = _native.lib()
    st, msg = _plain_check(lib, **case)
    assert st == fd.InvalidProblem.status, msg
    assert "spans more than 2^63 bytes" in msg


def test_largest_extents_have_a_workspace_size_that_fits():
    lib = _native.lib()
    # B * H_q at the int32 limit (one merge CTA per row): accepted, and the size is exact
    b, h, hkv, k_len, d = 2 ** 15, 2 ** 16 - 1, 2 ** 16 - 1, 2 ** 31 - 1, 128
    n = lib.fd_flash_decoding_workspace_size(b, h, hkv, k_len, d)
    p = _capi.FdDecodeParams.new()
    p.dtype, p.batch_size, p.num_heads, p.num_kv_heads, p.k_len, p.head_dim, p.scale = \
        1, b, h, hkv, k_len, d, 0.1
    got = ctypes.c_size_t(0)
    assert lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(got)) == 0
    assert got.value == n
    # one past: refused, size 0 with a message
    assert lib.fd_flash_decoding_workspace_size(2 ** 15 + 1, 2 ** 16, 2 ** 16, k_len, d) == 0
    assert "exceeds" in _native.last_error_message()
    # Python ints beyond int64 never reach C
    desc = fd.FlashDecodingDescriptor.new_gqa(1, 8, 8, 16, 128, fd.ElementKind.F16)
    plan = fd.FlashDecodingPlan.select(None, desc)
    bad = fd.TensorRef(addr(1), desc.kv_shape(), (2 ** 64, 16 * 128, 128, 1), dtype=desc.element)
    ok = [fd.TensorRef(addr(i), s, dtype=desc.element)
          for i, s in ((0, desc.q_shape()), (2, desc.kv_shape()))]
    with pytest.raises(fd.InvalidProblem):
        plan.can_implement(fd.FlashDecodingArgs(ok[0], bad, ok[1],
                                                fd.TensorMut(addr(3), desc.y_shape(),
                                                             dtype=desc.element)))


# ------------------------------------------------------------------ CPU: per-thread messages

def test_last_error_message_is_per_thread():
    """THREADS threads fail at once, each with its own value, and read their
    message after all have failed (and half of them have since succeeded)."""
    lib = _native.lib()
    barrier = threading.Barrier(THREADS)
    seen, errors = {}, []

    def worker(i):
        try:
            for rnd in range(200):
                bad = -(1000 * i + rnd + 1)
                st = lib.fd_flash_decoding_check_problem(1, bad, 8, 8, 16, 128, 0.125)
                assert st == fd.InvalidProblem.status
                barrier.wait()
                if i % 2 and rnd % 2:  # some threads succeed in between
                    assert lib.fd_flash_decoding_check_problem(1, 1, 8, 8, 16, 128, 0.125) == 0
                barrier.wait()
                msg = _native.last_error_message()
                if i % 2 and rnd % 2:
                    assert msg == "", msg
                else:
                    assert msg == f"batch_size = {bad} must be >= 1", (i, rnd, msg)
                seen[i] = rnd
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((i, e))
            barrier.abort()

    _run_threads(worker)
    assert not errors, errors
    assert seen == {i: 199 for i in range(THREADS)}


# ------------------------------------------------------------------ misuse (CPU-detectable)

def test_host_numpy_array_is_refused_by_the_package():
    desc = fd.FlashDecodingDescriptor.new_gqa(1, 4, 4, 8, 64, fd.ElementKind.F16)
    q = np.zeros(desc.q_shape(), np.float16)
    with pytest.raises(fd.InvalidPointer, match="host memory"):
        fd.FlashDecodingArgs(q, addr(1), addr(2), addr(3))


# ------------------------------------------------------------------ GPU: determinism

DET_SHAPE = (1, 32, 8, 4096, 128)  # split, merged through the workspace


@gpu
@pytest.mark.parametrize("pref", [fd.PlanPreference.DEFAULT, fd.PlanPreference.BATCH_INVARIANT],
                         ids=lambda p: p.value)
def test_same_problem_1000_times_same_bits(pref):
    torch = _torch()
    element = fd.ElementKind.F16
    desc = fd.FlashDecodingDescriptor.new_gqa(*DET_SHAPE, element)
    plan = fd.FlashDecodingPlan.select(None, desc, pref)
    q, k, v = _inputs(torch, desc, 1)
    outs = torch.full((REPEATS,) + desc.y_shape(), float("nan"), device="cuda",
                      dtype=torch.float16)
    _buf, ws = _workspace(torch, plan)
    s = torch.cuda.current_stream()
    for i in range(REPEATS):
        plan.run(_stream_handle(s), ws, _args(q, k, v, outs[i], element))
    torch.cuda.synchronize()
    bits = outs.view(torch.int16)
    assert torch.isfinite(outs).all()
    assert (bits == bits[0]).all(), "a repeat gave other bits"
    ref = reference.decode(q.float().cpu().numpy(), k.float().cpu().numpy(),
                           v.float().cpu().numpy(), desc.scale)
    assert reference.relative_error(outs[0].float().cpu().numpy(), ref) <= TOL[element]


@gpu
@pytest.mark.parametrize("pref", [fd.PlanPreference.DEFAULT, fd.PlanPreference.BATCH_INVARIANT],
                         ids=lambda p: p.value)
@pytest.mark.parametrize("shape", [DET_SHAPE, (4, 16, 2, 9000, 96), (3, 8, 8, 1, 72)],
                         ids=lambda s: "B%d_H%d_Hkv%d_K%d_D%d" % s)
def test_same_bits_with_another_workspace_stream_and_graph_replay(pref, shape):
    torch = _torch()
    element = fd.ElementKind.BF16
    desc = fd.FlashDecodingDescriptor.new_gqa(*shape, element)
    plan = fd.FlashDecodingPlan.select(None, desc, pref)
    q, k, v = _inputs(torch, desc, 2)

    def fresh_y():
        return torch.full(desc.y_shape(), float("nan"), device="cuda", dtype=torch.bfloat16)

    y0 = fresh_y()
    _b0, ws0 = _workspace(torch, plan)
    plan.run(None, ws0, _args(q, k, v, y0, element))
    torch.cuda.synchronize()
    base = _bits(torch, y0).clone()
    # another workspace buffer, full of garbage
    y1 = fresh_y()
    _b1, ws1 = _workspace(torch, plan, garbage=True)
    plan.run(None, ws1, _args(q, k, v, y1, element))
    torch.cuda.synchronize()
    assert torch.equal(_bits(torch, y1), base)
    # another stream
    s = torch.cuda.Stream()
    y2 = fresh_y()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        plan.run(_stream_handle(s), ws1, _args(q, k, v, y2, element))
    s.synchronize()
    assert torch.equal(_bits(torch, y2), base)
    # CUDA graph: capture once, replay with y poisoned in between
    y3 = fresh_y()
    graph = torch.cuda.CUDAGraph()
    cs = torch.cuda.Stream()
    cs.wait_stream(torch.cuda.current_stream())
    with torch.cuda.graph(graph, stream=cs):
        plan.run(_stream_handle(cs), ws1, _args(q, k, v, y3, element))
    for _ in range(10):
        y3.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(_bits(torch, y3), base)


# ------------------------------------------------------------------ GPU: batch invariance

@gpu
@pytest.mark.parametrize("k_len", [1, 511, 512, 513, 700, 9000])
@pytest.mark.parametrize("element", [fd.ElementKind.F16, fd.ElementKind.BF16],
                         ids=lambda e: e.short_name)
def test_batch_invariant_bits_do_not_depend_on_the_batch(k_len, element):
    """Each of 5 sequences gives the same bits alone (B=1), in pairs (B=2) and in
    the batch of 5, with the other sequences' contents different."""
    torch = _torch()
    hq, hkv, d = 32, 8, 128
    big = fd.FlashDecodingDescriptor.new_gqa(5, hq, hkv, k_len, d, element)
    q, k, v = _inputs(torch, big, 3)
    outs = {}
    for b, starts in ((5, [0]), (2, [0, 2, 3]), (1, [0, 1, 2, 3, 4])):
        desc = fd.FlashDecodingDescriptor.new_gqa(b, hq, hkv, k_len, d, element)
        plan = fd.FlashDecodingPlan.select(None, desc, fd.PlanPreference.BATCH_INVARIANT)
        _buf, ws = _workspace(torch, plan, garbage=True)
        for s0 in starts:
            sl = slice(s0, s0 + b)
            y = torch.full(desc.y_shape(), float("nan"), device="cuda", dtype=q.dtype)
            plan.run(None, ws, _args(q[sl].contiguous(), k[sl].contiguous(), v[sl].contiguous(),
                                     y, element))
            torch.cuda.synchronize()
            for j in range(b):
                outs.setdefault(s0 + j, []).append((b, _bits(torch, y[j]).clone()))
    for seq, got in outs.items():
        for b, bits in got[1:]:
            assert torch.equal(bits, got[0][1]), f"sequence {seq}: B={b} differs from B={got[0][0]}"
    ref = reference.decode(q.float().cpu().numpy(), k.float().cpu().numpy(),
                           v.float().cpu().numpy(), big.scale)
    y5 = torch.stack([outs[i][0][1] for i in range(5)]).view(q.dtype)
    assert reference.relative_error(y5.float().cpu().numpy(), ref) <= TOL[element]


@gpu
@pytest.mark.parametrize("element", [fd.ElementKind.F16, fd.ElementKind.BF16],
                         ids=lambda e: e.short_name)
def test_batch_invariant_bits_do_not_depend_on_the_other_sequences_lengths(element):
    """Through fd_decode with per-sequence lengths (seq_lens): sequence 0 (700 keys)
    gives the same bits alone, and in batches whose other sequences have other
    lengths (so another padded k_len, another split count)."""
    torch = _torch()
    hq, hkv, d, kmax = 8, 2, 128, 9000
    tdtype = torch.float16 if element == fd.ElementKind.F16 else torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(7)
    q = torch.randn(4, hq, d, device="cuda", generator=g).to(tdtype)
    k = torch.randn(4, hkv, kmax, d, device="cuda", generator=g).to(tdtype)
    v = torch.randn(4, hkv, kmax, d, device="cuda", generator=g).to(tdtype)
    lib = _native.lib()

    def run(batch, lens, k_len):
        lens_t = torch.tensor(lens, dtype=torch.int32, device="cuda")
        y = torch.full((batch, hq, d), float("nan"), device="cuda", dtype=tdtype)
        p = _capi.FdDecodeParams.new()
        p.dtype, p.flags = int(element), _capi.FD_FLAG_BATCH_INVARIANT
        p.q, p.k, p.v, p.y = q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr()
        p.batch_size, p.num_heads, p.num_kv_heads, p.k_len, p.head_dim = batch, hq, hkv, k_len, d
        p.scale = d ** -0.5
        p.q_stride_b, p.q_stride_h = q.stride(0), q.stride(1)
        p.k_stride_b, p.k_stride_h, p.k_stride_k = k.stride(0), k.stride(1), k.stride(2)
        p.v_stride_b, p.v_stride_h, p.v_stride_k = v.stride(0), v.stride(1), v.stride(2)
        p.y_stride_b, p.y_stride_h = y.stride(0), y.stride(1)
        p.seq_lens = ctypes.cast(ctypes.c_void_p(lens_t.data_ptr()), ctypes.POINTER(ctypes.c_int32))
        need = ctypes.c_size_t(0)
        assert lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(need)) == 0
        ws = torch.full((max(need.value, 16),), 0x5A, dtype=torch.uint8, device="cuda")
        p.workspace, p.workspace_bytes = ws.data_ptr(), need.value
        st = lib.fd_decode(ctypes.byref(p))
        assert st == 0, lib.fd_last_error_message().decode()
        torch.cuda.synchronize()
        return _bits(torch, y[0]).clone()

    alone = run(1, [700], 700)
    for lens, k_len in (([700, 1, 9000, 512], 9000), ([700, 3000, 0, 40], 3000),
                        ([700, 700, 700, 700], 700), ([700, 513, 8000, 2], 8000)):
        assert torch.equal(run(4, lens, k_len), alone), f"other lengths {lens} changed the bits"


# ------------------------------------------------------------------ GPU: concurrency

@gpu
def test_threads_with_own_stream_plan_workspace_match_a_serial_run():
    torch = _torch()
    element = fd.ElementKind.F16
    shapes = [(1, 32, 8, 4096, 128), (2, 16, 4, 3000, 64), (3, 8, 8, 257, 72),
              (1, 64, 8, 20000, 128), (4, 8, 2, 1000, 96), (1, 8, 1, 1, 80),
              (2, 32, 8, 512, 128), (5, 6, 3, 129, 40)]
    assert len(shapes) == THREADS
    jobs = []
    for i, shape in enumerate(shapes):
        desc = fd.FlashDecodingDescriptor.new_gqa(*shape, element)
        pref = fd.PlanPreference.BATCH_INVARIANT if i % 3 == 2 else fd.PlanPreference.DEFAULT
        plan = fd.FlashDecodingPlan.select(None, desc, pref)
        q, k, v = _inputs(torch, desc, 10 + i)
        jobs.append((desc, plan, q, k, v))
    serial = []
    for desc, plan, q, k, v in jobs:
        y = torch.full(desc.y_shape(), float("nan"), device="cuda", dtype=torch.float16)
        _buf, ws = _workspace(torch, plan)
        plan.run(None, ws, _args(q, k, v, y, element))
        torch.cuda.synchronize()
        serial.append(_bits(torch, y).clone())
    barrier = threading.Barrier(THREADS)
    errors, results = [], [None] * THREADS
    rounds = 50

    def worker(i):
        try:
            desc, plan, q, k, v = jobs[i]
            s = torch.cuda.Stream()
            buf, ws = _workspace(torch, plan, garbage=True)
            ys = [torch.full(desc.y_shape(), float("nan"), device="cuda", dtype=torch.float16)
                  for _ in range(rounds)]
            torch.cuda.synchronize()
            barrier.wait()
            for r in range(rounds):
                plan.run(_stream_handle(s), ws, _args(q, k, v, ys[r], element))
                # a failing call on this thread: its message stays on this thread
                st = _native.lib().fd_flash_decoding_check_problem(1, 1, 8, 3, 16, 128, 0.1)
                assert st == fd.InvalidProblem.status
                assert _native.last_error_message() == \
                    "num_heads = 8 is not a multiple of num_kv_heads = 3"
            s.synchronize()
            results[i] = [_bits(torch, y) for y in ys]
            del buf
        except BaseException as e:  # noqa: BLE001
            errors.append((i, repr(e)))
            barrier.abort()

    _run_threads(worker)
    assert not errors, errors
    for i in range(THREADS):
        for r, bits in enumerate(results[i]):
            assert torch.equal(bits, serial[i]), f"thread {i} round {r} differs from serial"


# ------------------------------------------------------------------ GPU: huge problem

@gpu
def test_huge_problem_more_than_2_31_elements_is_exact_on_sampled_heads():
    torch = _torch()
    free, _total = torch.cuda.mem_get_info()
    if free < HUGE_FREE_BYTES:
        pytest.skip(f"needs {HUGE_FREE_BYTES >> 30} GiB free on the GPU, has {free >> 30} GiB")
    b, hq, hkv, k_len, d = HUGE
    element = fd.ElementKind.F16
    desc = fd.FlashDecodingDescriptor.new_gqa(b, hq, hkv, k_len, d, element)
    assert b * hkv * k_len * d > 2 ** 31  # element offsets past int32
    plan = fd.FlashDecodingPlan.select(None, desc)
    g = torch.Generator(device="cuda").manual_seed(4)
    q = torch.randn(desc.q_shape(), generator=g, device="cuda").half()
    k = torch.empty(desc.kv_shape(), device="cuda", dtype=torch.float16)
    v = torch.empty(desc.kv_shape(), device="cuda", dtype=torch.float16)
    chunk = 1 << 18
    for h in range(hkv):
        for c0 in range(0, k_len, chunk):
            n = min(chunk, k_len - c0)
            k[0, h, c0:c0 + n] = torch.randn(n, d, generator=g, device="cuda").half()
            v[0, h, c0:c0 + n] = (torch.randn(n, d, generator=g, device="cuda") + 1.0).half()
    # needles: keys aligned with q at the far end, so the last 2^20 keys (element
    # offsets past 2^31) carry weight and must be read at the right address
    needles = [k_len - 1, k_len - 3 * chunk - 5, 3 * k_len // 4]
    for h in range(hkv):
        for j, idx in enumerate(needles):
            k[0, h, idx] = (q[0, h].float() * (3.0 + j)).half()
            v[0, h, idx] = torch.full((d,), 4.0 * (j + 1), device="cuda").half()
    y = torch.full(desc.y_shape(), float("nan"), device="cuda", dtype=torch.float16)
    _buf, ws = _workspace(torch, plan)
    plan.run(None, ws, _args(q, k, v, y, element))
    torch.cuda.synchronize()
    assert torch.isfinite(y).all()
    sampled = [0, 3, hkv - 1]
    worst = 0.0
    for h in sampled:
        qd = q[0, h].double()
        logits = torch.empty(k_len, dtype=torch.float64, device="cuda")
        for c0 in range(0, k_len, chunk):
            logits[c0:c0 + chunk] = (k[0, h, c0:c0 + chunk].double() @ qd) * desc.scale
        w = torch.softmax(logits, dim=0)
        out = torch.zeros(d, dtype=torch.float64, device="cuda")
        for c0 in range(0, k_len, chunk):
            out += w[c0:c0 + chunk] @ v[0, h, c0:c0 + chunk].double()
        err = ((y[0, h].double() - out).abs().max() / out.abs().max()).item()
        worst = max(worst, err)
    assert worst <= TOL[element], f"relative error {worst:.2e} on heads {sampled}"


# ------------------------------------------------------------------ GPU: misuse

@gpu
def test_k_len_at_int32_max_counts_every_key():
    """A broadcast cache (K and V strides 0) of INT32_MAX keys: the last chunk's
    end once passed INT32_MAX, wrapped and dropped that split. All scores are
    equal, so y is the V row whatever the weights; the LSE is score + ln(k_len)
    only if every key counted (a dropped split of 16 is off by ln(15/16)). With
    16 splits of 2^27 keys, one warp's f32 accumulator summed 2^21 tiles and y
    came out 18-28% low; chunks of at most 2^19 keys (2^13 tiles per warp, whose
    sum of 16-bit terms an f32 holds exactly) must give y to the tolerance of
    every other test."""
    torch = _torch()
    b, hq, hkv, k_len, d = 1, 8, 1, 2 ** 31 - 1, 8
    g = torch.Generator(device="cuda").manual_seed(7)
    q = torch.randn(b, hq, d, generator=g, device="cuda").half()
    k = torch.randn(d, generator=g, device="cuda").half()
    v = torch.randn(d, generator=g, device="cuda").half()
    y = torch.full((b, hq, d), float("nan"), device="cuda", dtype=torch.float16)
    lse = torch.full((b, hq), float("nan"), device="cuda", dtype=torch.float32)
    p = _capi.FdDecodeParams()
    p.struct_size = ctypes.sizeof(p)
    p.dtype = int(fd.ElementKind.F16)
    p.q, p.k, p.v, p.y = q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr()
    p.batch_size, p.num_heads, p.num_kv_heads, p.k_len, p.head_dim = b, hq, hkv, k_len, d
    p.q_stride_b, p.q_stride_h = hq * d, d
    p.k_stride_b = p.k_stride_h = p.k_stride_k = 0
    p.v_stride_b = p.v_stride_h = p.v_stride_k = 0
    p.y_stride_b, p.y_stride_h = hq * d, d
    p.scale = d ** -0.5
    p.lse, p.lse_stride_b, p.lse_stride_h = ctypes.cast(lse.data_ptr(), ctypes.POINTER(ctypes.c_float)), hq, 1
    lib = _native.lib()
    need = ctypes.c_size_t(0)
    assert lib.fd_decode_workspace_size(ctypes.byref(p), ctypes.byref(need)) == 0
    ws = torch.empty(max(need.value, 1), dtype=torch.uint8, device="cuda")
    p.workspace, p.workspace_bytes = ws.data_ptr(), need.value
    plan = _capi.FdLaunchPlan(struct_size=ctypes.sizeof(_capi.FdLaunchPlan))
    assert lib.fd_decode_plan(ctypes.byref(p), ctypes.byref(plan)) == 0, _native.last_error_message()
    assert plan.num_splits > 1 and plan.num_splits * plan.chunk_len > 2 ** 31 - 1
    assert lib.fd_decode(ctypes.byref(p)) == 0, _native.last_error_message()
    torch.cuda.synchronize()
    score = (q.double() @ k.double()) * d ** -0.5  # [b, hq]
    want_lse = score + np.log(k_len)
    assert torch.allclose(lse.double(), want_lse, rtol=0, atol=1e-3), (lse, want_lse)
    want_y = v.double().expand(b, hq, d)
    err = ((y.double() - want_y).abs().max() / want_y.abs().max()).item()
    assert err <= 2e-3, f"relative error {err:.3e} > 2e-3 at k_len = INT32_MAX"


@gpu
def test_int32_max_keys_split_into_positive_chunks_that_cover_every_key():
    """Enough units for one split each, and k_len = INT32_MAX: the chunk, rounded
    up to 64 keys, once wrapped to INT32_MIN (the kernel then read nothing). The
    plan now covers every key with positive chunks of at most 2^19 keys (the bound
    that keeps one split's f32 running sum accurate), so a split list forms even
    where the units alone fill the GPU."""
    k_len = 2 ** 31 - 1
    desc = fd.FlashDecodingDescriptor.new_gqa(512, 8, 8, k_len, 8, fd.ElementKind.F16)
    plan = fd.FlashDecodingPlan.select(None, desc).launch_plan()
    splits, chunk = plan["num_splits"], plan["chunk_len"]
    assert 0 < chunk <= 2 ** 19 and chunk % 64 == 0
    assert splits * chunk >= k_len > (splits - 1) * chunk  # every key, no empty split


_MISUSE = r"""
import ctypes, sys
import numpy as np
import torch
import flashdecoding as fd
from flashdecoding import _native
lib = _native.lib()
B, H, K, D = 1, 8, 64, 128
kind = sys.argv[1] if len(sys.argv) > 1 else "{kind}"
dev = torch.zeros(1, device="cuda")
if kind == "host":
    host = np.zeros(2 ** 21, np.float16)  # 4 MiB: every tensor below lies inside
    base = host.ctypes.data
    q, k, v, y = base, base + 2 ** 16, base + 2 ** 18, base + 2 ** 20
else:
    other = torch.zeros(2 ** 21, dtype=torch.float16, device="cuda:1")
    base = other.data_ptr()
    q, k, v, y = base, base + 2 ** 16, base + 2 ** 18, base + 2 ** 20
st = lib.fd_flash_decoding_f16_run(q, k, v, y, None, 0, B, H, H, K, D, H * D, D, H * K * D,
                                   K * D, D, H * K * D, K * D, D, H * D, D, 0.1, None)
print("STATUS", st, _native.last_error_message())
sys.stdout.flush()
try:
    torch.cuda.synchronize()
    print("SYNC ok")
except Exception as e:
    print("SYNC error", str(e).splitlines()[0])
"""


def _misuse(kind):
    r = run_python(_MISUSE.replace("{kind}", kind), timeout=300)
    status = [ln for ln in r.stdout.splitlines() if ln.startswith("STATUS")]
    assert status, r.stdout + r.stderr
    return int(status[0].split()[1]), r.stdout


@gpu
def test_host_pointer_as_device_pointer_is_not_detected_by_the_c_library():
    """Documented limit: the C library does not ask cudaPointerGetAttributes, so a
    host address reaches the kernel (which may fault, or read it through HMM). The
    package refuses numpy arrays before C (test_host_numpy_array_is_refused...)."""
    _torch()
    status, out = _misuse("host")
    assert status == 0, out  # if this fails, the library now detects it: update README


@gpu
def test_pointer_on_another_device_is_not_detected_by_the_c_library():
    torch = _torch()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    status, out = _misuse("other")
    assert status == 0, out  # documented as not detected


# ------------------------------------------------------------------ GPU: several devices

@gpu
def test_plans_on_two_devices_from_two_threads():
    torch = _torch()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    element = fd.ElementKind.BF16
    desc = fd.FlashDecodingDescriptor.new_gqa(2, 32, 8, 5000, 128, element)
    q, k, v = _inputs(torch, desc, 5, device="cpu")
    ref = reference.decode(q.float().numpy(), k.float().numpy(), v.float().numpy(), desc.scale)
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def worker(dev):
        try:
            with torch.cuda.device(dev):
                plan = fd.FlashDecodingPlan.select(None, desc)
                lp = plan.launch_plan()  # planned for this thread's current device
                qd, kd, vd = (t.to(f"cuda:{dev}") for t in (q, k, v))
                s = torch.cuda.Stream(device=dev)
                buf, ws = _workspace(torch, plan, device=f"cuda:{dev}")
                y = torch.full(desc.y_shape(), float("nan"), device=f"cuda:{dev}",
                               dtype=torch.bfloat16)
                torch.cuda.synchronize(dev)
                barrier.wait()
                for _ in range(20):
                    plan.run(_stream_handle(s), ws, _args(qd, kd, vd, y, element))
                s.synchronize()
                results[dev] = (y.cpu(), lp, torch.cuda.get_device_name(dev))
                del buf
        except BaseException as e:  # noqa: BLE001
            errors.append((dev, repr(e)))
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for dev in (0, 1):
        y, _lp, _name = results[dev]
        assert reference.relative_error(y.float().numpy(), ref) <= TOL[element], dev
    if results[0][2] == results[1][2]:
        assert torch.equal(results[0][0].view(torch.int16), results[1][0].view(torch.int16))
