"""``python -m flashdecoding bench``: flashdecoding against its peers, side by side.

Measures, in one process on one GPU: the HBM ceiling (a device-to-device copy
and a read-only reduction), then for each shape (PERF.md's grid by default)
each method -- flashdecoding through its public Python API, PyTorch SDPA with
the flash and cuDNN backends, FlashInfer batch decode (paged, page 16, HND;
CUDA cores and tensor cores) -- first checked against a float32 reference,
then timed with CUDA events around CUDA-graph replays over rotated KV replicas
(>= 1 GiB touched, so L2 never holds the cache).  Prints a table (us, GB/s,
% of the read-only ceiling, ratio to the best peer, geomean) and PERF.md's
bar; writes JSON / CSV / PNG on request.

Usage (on the GPU machine)::

    python -m flashdecoding bench --json bench.json --png bench.png
    PYTHONPATH=python python3 scripts/bench.py --quick --methods flashdecoding,sdpa-cudnn
    python -m flashdecoding bench --shape 1,32,8,512,128 --shape 4,64,8,4096,128 --dtype f16

FlashInfer is used when ``import flashinfer`` works (see the header of
shared/tools/peer-bundle.sh); else its columns read "n/a".

Exit status: 0 when everything ran; 1 when a method failed its correctness
check; 2 on a usage or environment error; 3 with --require-bar when the bar
is not met.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import sys

from . import _bench_meta as meta
from . import _bench_report as report_mod
from . import _bench_shapes as shp
from . import _bench_stats as st
from ._bench_progress import progress

GIB = 1 << 30


def _shape_arg(text):
    try:
        return shp.parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _methods_arg(text):
    names = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "all":
            names.extend(st.METHODS)
        elif part == "peers":
            names.extend(m for m in st.METHODS if m not in st.OURS_ALL)
        elif part in ("ours", "fd"):
            names.append(st.OURS)
        elif part in st.METHODS:
            names.append(part)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown method {part!r}; choose from {', '.join(st.METHODS)}, all, peers")
    out = []
    for n in names:                      # keep order, drop repeats
        if n not in out:
            out.append(n)
    if not out:
        raise argparse.ArgumentTypeError("no method chosen")
    return out


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {v}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flashdecoding bench",
        description="Time flashdecoding against PyTorch SDPA (flash, cuDNN) and FlashInfer "
                    "on one GPU, next to the measured HBM ceiling.")
    p.add_argument("--shape", action="append", type=_shape_arg, metavar="B,Hq,Hkv,K,D",
                   help="a shape to run (repeatable); default: PERF.md's 10-row grid")
    p.add_argument("--dtype", choices=sorted(shp.ELEM_BYTES), default="bf16")
    p.add_argument("--methods", type=_methods_arg, default=list(st.METHODS),
                   help=f"comma list of {', '.join(st.METHODS)} (or all, peers); default all")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats and warm-ups (still a median of 7)")
    p.add_argument("--repeats", type=_positive_int, default=None,
                   help="timed graph replays per method (default 15, --quick 7)")
    p.add_argument("--touch-gib", type=_positive_float, default=1.0,
                   help="KV bytes touched per pass over the replicas (default 1 GiB)")
    p.add_argument("--replica-gib", type=_positive_float, default=4.0,
                   help="most GiB of KV replicas per shape (default 4; >= 2 replicas always)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write every number as JSON")
    p.add_argument("--csv", metavar="PATH", help="write one line per shape and method")
    p.add_argument("--png", metavar="PATH", help="write a plot: %% of ceiling per shape, method")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--require-bar", action="store_true",
                   help="exit 3 when PERF.md's bar is not met")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.shapes = args.shape or shp.default_grid()
    if args.repeats is None:
        args.repeats = 7 if args.quick else 15
    args.warmup_replays = 1 if args.quick else 3
    args.ceiling_repeats = 5 if args.quick else 10
    return args


def _brief(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:240]


def _run_method(name, data, refs, n_calls, args, ceiling_gbps, nbytes, gpu, mt):
    """Prepare, check, then time one method on one shape; returns its result."""
    res = {"status": None, "replicas": data.R, "calls_per_graph": n_calls,
           "touched_bytes": data.R * shp.kv_bytes(data.shape, data.dtype)}
    try:
        prep = mt.prepare(name, data)
    except mt.NotAvailable as e:
        return {**res, "status": "n/a", "note": str(e)[:240]}
    except mt.Unsupported as e:
        return {**res, "status": "unsupported", "note": str(e)[:240]}
    except Exception as e:
        return {**res, "status": "error", "note": "prepare: " + _brief(e)}
    res["extra"] = prep.extra
    tol = shp.TOLERANCE[data.dtype]
    try:
        errs = []
        for r, ref in refs.items():
            if prep.poison is not None:
                prep.poison()
            out = prep.calls[r]()
            gpu.sync()
            errs.append(gpu.rel_err(out, ref))
        if name in st.OURS_ALL and prep.poison is not None:
            prep.poison()
            first = prep.calls[0]().clone()
            prep.poison()
            second = prep.calls[0]()
            gpu.sync()
            res["bit_identical_repeat"] = gpu.bits_equal(first, second)
    except Exception as e:
        return {**res, "status": "error", "note": "check: " + _brief(e)}
    res["rel_err"] = max(errs)
    res["tolerance"] = tol
    if not res["rel_err"] <= tol:
        return {**res, "status": "FAILED",
                "note": f"rel. error {res['rel_err']:.3e} > {tol:g} (not timed)"}
    try:
        samples = gpu.time_graph(prep.calls, n_calls, args.repeats, args.warmup_replays)
    except Exception as e:
        return {**res, "status": "error", "note": "timing: " + _brief(e)}
    finally:
        del prep
    us = st.median(samples)
    gbps = shp.gbps_of(nbytes, us)
    return {**res, "status": "ok", "us": us, "gbps": gbps,
            "pct": 100.0 * gbps / ceiling_gbps, "samples_us": samples,
            "spread": (max(samples) - min(samples)) / us}


def _replicas_for(shape, args, free_bytes, with_pages):
    kvb = shp.kv_bytes(shape, args.dtype)
    R = shp.replica_plan(kvb, int(args.touch_gib * GIB), int(args.replica_gib * GIB))
    # Contiguous replicas, FlashInfer's paged copy of them, and the reference's
    # f32 upcast must fit in free memory with room to spare.
    copies = 2 if with_pages else 1
    while R > 2 and (R * copies + 3) * kvb > 0.8 * free_bytes:
        R -= 1
    return R


def _run_shape(shape, args, ceiling, bar, gpu, mt):
    """All methods on one shape: inputs and references once, then each method."""
    nbytes = shp.problem_bytes(shape, args.dtype)
    kvb = shp.kv_bytes(shape, args.dtype)
    floor = shp.floor_us(nbytes, ceiling["read_gbps"])
    row = {"shape": shape, "kv_bytes": kvb, "bytes": nbytes, "floor_us": floor, "results": {}}
    fi_methods = [m for m in args.methods if m in st.FLASHINFER_METHODS]
    R = _replicas_for(shape, args, gpu.free_bytes(), bool(fi_methods))
    n_calls = shp.calls_per_graph(R, floor)
    row.update(replicas=R, calls_per_graph=n_calls, touched_bytes=R * kvb)
    data = None
    try:
        data = mt.ShapeData(shape, args.dtype, gpu.TORCH_DTYPE[args.dtype], R, args.seed)
        refs = {r: gpu.reference(data.q, data.k[r], data.v[r], data.scale)
                for r in sorted({0, R - 1})}
    except Exception as e:
        note = "inputs: " + _brief(e)
        for m in args.methods:
            row["results"][m] = {"status": "error", "note": note}
            bar.update()
        data = None
        gc.collect()
        gpu.release_memory()
        return row
    for m in args.methods:
        bar.set_description(f"{shape.label()} {m}")
        row["results"][m] = _run_method(m, data, refs, n_calls, args, ceiling["read_gbps"],
                                        nbytes, gpu, mt)
        if fi_methods and m == fi_methods[-1]:
            data.release_paged()
        gc.collect()
        gpu.release_memory()
        bar.update()
    data.release()
    del refs
    gc.collect()
    gpu.release_memory()
    return row


def build_report(args, meta_info, ceiling, rows) -> dict:
    rep = {
        "tool": "flashdecoding bench",
        "meta": meta_info,
        "dtype": args.dtype,
        "methods": list(args.methods),
        "repeats": args.repeats,
        "quick": bool(args.quick),
        "timing": ("CUDA events around CUDA-graph replays; each graph holds calls_per_graph "
                   "calls cycling over `replicas` KV copies; us per call = replay / calls; "
                   "median of `repeats` replays"),
        "tolerance": shp.TOLERANCE[args.dtype],
        "ceiling": ceiling,
        "rows": rows,
    }
    rep["bar"] = st.check_bar(rows, latency_shape=shp.LATENCY_SHAPE)
    rep["geomean_ratio_to_best_peer"] = rep["bar"]["geomean"]["value"]
    return rep


def write_outputs(rep, args, out=None, err=None):
    """The table on ``out`` (stdout); JSON / CSV / PNG files when asked, noted on ``err``."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    print(report_mod.format_table(rep), file=out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(report_mod.to_json(rep))
        print(f"wrote {args.json}", file=err)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(report_mod.to_csv(rep))
        print(f"wrote {args.csv}", file=err)
    if args.png:
        from ._bench_plot import write_png
        try:
            how = write_png(rep, args.png)
            print(f"wrote {args.png} ({how})", file=err)
        except Exception as e:
            print(f"could not write {args.png}: {_brief(e)}", file=err)


def exit_code(rep, args) -> int:
    if any(res.get("status") == "FAILED" for row in rep["rows"] for res in row["results"].values()):
        return 1
    if args.require_bar and rep["bar"]["all"] is not True:
        return 3
    return 0


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:          # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    try:
        import torch
    except ImportError as e:
        print(f"flashdecoding bench needs PyTorch with CUDA: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("flashdecoding bench needs a CUDA GPU (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    from . import _bench_gpu as gpu
    from . import _bench_methods as mt

    torch.cuda.init()
    bar = progress(1 + len(args.shapes) * len(args.methods), enabled=not args.no_progress)
    try:
        bar.set_description("HBM ceiling")
        ceiling = gpu.measure_ceiling(GIB, args.ceiling_repeats, args.warmup_replays)
        bar.update()
        rows = [_run_shape(s, args, ceiling, bar, gpu, mt) for s in args.shapes]
    finally:
        bar.close()
    info = {**gpu.device_info(), **meta.commit_info(), "host": meta.host_info(),
            "versions": mt.versions(),
            "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    rep = build_report(args, info, ceiling, rows)
    write_outputs(rep, args)
    return exit_code(rep, args)


if __name__ == "__main__":
    sys.exit(main())
