"""Command line: ``python -m flashdecoding info|run|bench`` (console script ``flashdecoding``).

info   versions, the library's compiled architectures and kernel cells, the GPU seen
run    one decode of a shape (default: a Llama-3-8B step), checked against the
       float64 reference and timed: µs per call, GB/s, % of a device-to-device copy
bench  the benchmark suite (flashdecoding.bench)
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from typing import List, Optional

from ._version import __version__, version_text

TOLERANCE = {"f16": 2e-3, "bf16": 1e-2}


# --------------------------------------------------------------------------- info

def cmd_info(_args) -> int:
    from . import _native
    from .cells import kernel_cells
    from .cuda import compute_capability, device_name, gpu_status

    print(f"flashdecoding (Python) {__version__}")
    try:
        lib = _native.lib()
    except Exception as exc:
        print(f"library: not loaded: {exc}")
        return 1
    print(f"library: {version_text(lib.fd_get_version())} at {_native.library_path()}")
    try:
        import cuda.bindings

        print(f"cuda-python: cuda.bindings {cuda.bindings.__version__}")
    except Exception:
        print("cuda-python: not installed")
    print(f"compiled architectures: {lib.fd_compiled_architectures().decode()}")
    cells = kernel_cells()
    print(f"kernel cells: {len(cells)}")
    print(f"  {'#':>4}  {'q':<9} {'kv':<9} {'head_dim':>8}  {'cache':<10} {'from':<5} "
          f"{'group/CTA':>9}  name")
    for c in cells:
        q = c.element.short_name if c.element is not None else "f16/bf16"
        print(f"  {c.index:>4}  {q:<9} {c.kv_element.short_name:<9} {c.head_dim:>8}  "
              f"{'paged' if c.paged else 'contiguous':<10} {c.arch.min_arch.name:<5} "
              f"{c.max_group_per_cta:>9}  {c.name}")
    ok, why = gpu_status()
    if ok:
        major, minor = compute_capability()
        print(f"GPU: {device_name()} (sm_{major}{minor})")
    else:
        print(f"GPU: no GPU ({why})")
    return 0


# --------------------------------------------------------------------------- run

def _rt():
    from .cuda import runtime

    return runtime()


def _graph_of(stream, body):
    """Captures body() on ``stream`` into an instantiated CUDA graph."""
    from .cuda import check

    rt = _rt()
    s = rt.cudaStream_t(stream.handle)
    check(rt.cudaStreamBeginCapture(
        s, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture")
    try:
        body()
    finally:
        graph = check(rt.cudaStreamEndCapture(s), "cudaStreamEndCapture")
    exe = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    return graph, exe


def _time_ms(stream, launch, repeats: int) -> List[float]:
    from .cuda import Event

    times = []
    for _ in range(repeats):
        start, end = Event(), Event()
        start.record(stream)
        launch()
        end.record(stream)
        end.synchronize()
        times.append(start.elapsed_ms(end))
    return times


def measure_copy_bandwidth(stream, nbytes: int, iters: int = 10) -> float:
    """Device-to-device cudaMemcpyAsync bandwidth in GB/s, counting read + write."""
    from .cuda import DeviceBuffer, check

    rt = _rt()
    s = rt.cudaStream_t(stream.handle)
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    with DeviceBuffer(nbytes) as a, DeviceBuffer(nbytes) as b:
        a.fill_bytes(1, stream=stream)

        def launch():
            for _ in range(iters):
                check(rt.cudaMemcpyAsync(b.ptr, a.ptr, nbytes, kind, s), "cudaMemcpyAsync")

        launch()
        ms = statistics.median(_time_ms(stream, launch, 5))
    return 2.0 * nbytes * iters / (ms * 1e-3) / 1e9


def cmd_run(args) -> int:
    import numpy as np

    from . import reference
    from .cuda import DeviceBuffer, Stream, check, gpu_status
    from .descriptor import FlashDecodingDescriptor
    from .errors import Error
    from .kinds import ElementKind
    from .plan import FlashDecodingArgs, FlashDecodingPlan, Workspace

    ok, why = gpu_status()
    if not ok:
        print(f"flashdecoding run: no CUDA GPU available ({why})", file=sys.stderr)
        return 2
    element = ElementKind.parse(args.dtype)
    try:
        desc = FlashDecodingDescriptor.new_gqa(args.batch, args.heads, args.kv_heads, args.k_len,
                                               args.head_dim, element)
        plan = FlashDecodingPlan.select(None, desc)
    except Error as exc:
        print(f"flashdecoding run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    host_dt = element.numpy_dtype()
    q = rng.standard_normal(desc.q_shape(), dtype=np.float32).astype(host_dt)
    k = rng.standard_normal(desc.kv_shape(), dtype=np.float32).astype(host_dt)
    v = rng.standard_normal(desc.kv_shape(), dtype=np.float32).astype(host_dt)
    kv_bytes = 2 * k.nbytes
    replicas = max(1, min(args.max_replicas, math.ceil(args.rotate_mib * 2**20 / max(kv_bytes, 1))))
    free_bytes = int(check(_rt().cudaMemGetInfo(), "cudaMemGetInfo")[0])
    replicas = max(1, min(replicas, int(free_bytes * 0.5 // max(kv_bytes, 1))))

    stream = Stream()
    dq = DeviceBuffer.from_numpy(q)
    ks = [DeviceBuffer.from_numpy(k)]
    vs = [DeviceBuffer.from_numpy(v)]
    rt = _rt()
    d2d = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    for _ in range(replicas - 1):
        kr, vr = DeviceBuffer.empty(k.shape, host_dt), DeviceBuffer.empty(v.shape, host_dt)
        check(rt.cudaMemcpy(kr.ptr, ks[0].ptr, k.nbytes, d2d), "cudaMemcpy D2D")
        check(rt.cudaMemcpy(vr.ptr, vs[0].ptr, v.nbytes, d2d), "cudaMemcpy D2D")
        ks.append(kr)
        vs.append(vr)
    y = DeviceBuffer.empty(desc.y_shape(), host_dt)
    ws_buf = DeviceBuffer(plan.workspace_size())
    ws = Workspace.borrowed(ws_buf) if plan.workspace_size() else Workspace.none()
    all_args = [FlashDecodingArgs(dq, ks[i], vs[i], y) for i in range(replicas)]

    # correctness first: NaN-poisoned output, then compare with the f64 reference
    y.copy_from_numpy(np.full(desc.y_shape(), np.nan, dtype=np.float32).astype(host_dt))
    try:
        plan.run(stream, ws, all_args[0])
        stream.synchronize()
    except Error as exc:
        print(f"flashdecoding run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    err = reference.relative_error(y.to_numpy(), reference.decode(q, k, v, desc.scale))
    tol = TOLERANCE[element.short_name]

    def body():
        for a in all_args:
            plan.run(stream, ws, a)

    graph = exe = None
    if args.graph:
        graph, exe = _graph_of(stream, body)
        s = rt.cudaStream_t(stream.handle)

        def launch():
            for _ in range(args.iters):
                check(rt.cudaGraphLaunch(exe, s), "cudaGraphLaunch")
    else:
        def launch():
            for _ in range(args.iters):
                body()
    for _ in range(args.warmup):
        launch()
    ms = statistics.median(_time_ms(stream, launch, args.repeats))
    us = ms * 1e3 / (args.iters * replicas)
    copy_gbs = measure_copy_bandwidth(stream, min(1 << 30, max(64 << 20, free_bytes // 8)))
    if exe is not None:
        rt.cudaGraphExecDestroy(exe)
        rt.cudaGraphDestroy(graph)
    gbs = desc.bytes_moved() / (us * 1e-6) / 1e9
    print(f"shape: B={desc.batch_size} H_q={desc.num_heads} H_kv={desc.num_kv_heads} "
          f"K_len={desc.k_len} D={desc.head_dim} {element.short_name}  cell {plan.sku().name}  "
          f"workspace {plan.workspace_size()} B")
    print(f"check: max rel. error vs f64 reference {err:.2e} (tolerance {tol:.0e}) "
          f"{'OK' if err <= tol else 'FAILED'}")
    print(f"time: {us:.2f} us/call ({'CUDA graph' if args.graph else 'stream'} of {replicas} "
          f"KV replicas x {args.iters}, median of {args.repeats})")
    print(f"bandwidth: {gbs:.0f} GB/s = {100.0 * gbs / copy_gbs:.1f}% of the measured "
          f"device-to-device copy ({copy_gbs:.0f} GB/s)")
    for buf in ks + vs + [dq, y, ws_buf]:
        buf.free()
    stream.close()
    return 0 if err <= tol else 1


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashdecoding", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"flashdecoding {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, compiled architectures, kernel cells, the GPU")
    r = sub.add_parser("run", help="one decode, checked and timed (default: Llama-3-8B step)")
    r.add_argument("--batch", "-b", type=int, default=1)
    r.add_argument("--heads", type=int, default=32, help="query heads H_q")
    r.add_argument("--kv-heads", type=int, default=8, help="KV heads H_kv")
    r.add_argument("--k-len", type=int, default=4096)
    r.add_argument("--head-dim", type=int, default=128)
    r.add_argument("--dtype", choices=["f16", "bf16"], default="bf16")
    r.add_argument("--iters", type=int, default=20, help="graph replays per timing")
    r.add_argument("--repeats", type=int, default=7)
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--rotate-mib", type=int, default=1024,
                   help="KV bytes to rotate through so L2 never holds the cache")
    r.add_argument("--max-replicas", type=int, default=256)
    r.add_argument("--no-graph", dest="graph", action="store_false",
                   help="time plain launches instead of CUDA graph replays")
    r.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="benchmarks (flashdecoding.bench); arguments pass through",
                   add_help=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from . import bench

        return int(bench.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return cmd_info(args)
    return cmd_run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
