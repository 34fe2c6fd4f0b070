"""``python -m flashdecoding bench``: options, and one run from the ceiling to
the report.

    python -m flashdecoding bench                      # perf grid + zoo, every method
    python -m flashdecoding bench --quick              # ours and cuDNN, fewer repeats
    python -m flashdecoding bench --grid perf --methods ours,peers --json out.json
    python -m flashdecoding bench --grid zoo --only paged --methods ours,fi-tc
    python -m flashdecoding bench --shape 1,32,8,512,128 --dtype f16
    python -m flashdecoding bench --list               # the rows, without a GPU
    python -m flashdecoding bench --compare old.json new.json   # two builds, row by row

Exit status: 0 when everything ran; 1 when flashdecoding failed its
correctness check on a row; 2 on a usage or environment error; 3 with
--require-bar when the bar is not met.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys

from . import grids as gr
from . import meta
from . import report as rpt
from . import runner
from . import shapes as shp
from . import stats as st
from . import support
from .progress import progress

GIB = 1 << 30
METHOD_GROUPS = {
    "all": st.METHODS,
    "peers": tuple(m for m in st.METHODS if m not in st.OURS_ALL),
    "ours": (st.OURS,), "fd": (st.OURS,),
    "sdpa": st.SDPA_METHODS,
    "flashinfer": st.FLASHINFER_METHODS, "fi": st.FLASHINFER_METHODS,
}


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
        if part in METHOD_GROUPS:
            names.extend(METHOD_GROUPS[part])
        elif part in st.METHODS:
            names.append(part)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown method {part!r}; choose from {', '.join(st.METHODS)} or "
                f"{', '.join(METHOD_GROUPS)}")
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
                    "on one GPU, next to the measured read ceiling, and judge the bar "
                    "(docs/PERFORMANCE.md).",
        epilog="Exit status: 0 ran; 1 flashdecoding failed a check; 2 usage or environment "
               "error; 3 --require-bar and the bar is not met.")
    p.add_argument("--grid", choices=gr.GRID_CHOICES, default="all",
                   help="perf (the 10-row grid), zoo (model shapes, paged, fp8, head_dim 256, "
                        "window and sink rows) or all (default)")
    p.add_argument("--shape", action="append", type=_shape_arg, metavar="B,Hq,Hkv,K,D",
                   help="run these plain shapes instead of the grids (repeatable)")
    p.add_argument("--dtype", choices=gr.DTYPE_CHOICES, default=None,
                   help="default: bf16 for the perf grid, bf16 and f16 for the zoo's model rows")
    p.add_argument("--methods", type=_methods_arg, default=None,
                   help=f"comma list of {', '.join(st.METHODS)} or groups "
                        f"{', '.join(METHOD_GROUPS)}; default all "
                        f"(--quick: {','.join(st.QUICK_METHODS)})")
    p.add_argument("--only", action="append", metavar="TEXT",
                   help="keep the rows whose label contains TEXT (repeatable: any of them)")
    p.add_argument("--compare", nargs=2, metavar=("OLD.json", "NEW.json"),
                   help="print ours per row in NEW over OLD (two builds run back to back), "
                        "then exit (no GPU)")
    p.add_argument("--list", action="store_true",
                   help="print the rows and which peers can run them, then exit (no GPU)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats and warm-ups (a median of 7), ours and cuDNN by default")
    p.add_argument("--repeats", type=_positive_int, default=None,
                   help="timed graph replays per method (default 15, --quick 7)")
    p.add_argument("--touch-gib", type=_positive_float, default=1.0,
                   help="KV bytes read per pass over the replicas (default 1 GiB)")
    p.add_argument("--replica-gib", type=_positive_float, default=4.0,
                   help="most GiB of KV replicas per row (default 4; >= 2 replicas always)")
    p.add_argument("--ceiling-gib", type=_positive_float, default=1.0,
                   help="bytes the read ceiling streams (default 1 GiB)")
    p.add_argument("--no-read-kernel", action="store_true",
                   help="measure the ceiling with torch only (then a lower bound)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write every number as JSON")
    p.add_argument("--csv", metavar="PATH", help="write one line per row and method")
    p.add_argument("--png", metavar="PATH",
                   help="write a plot of %% of the ceiling (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--require-bar", action="store_true",
                   help="exit 3 when the bar is not met")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shape:
        args.selection = gr.custom(args.shape, args.dtype)
    else:
        args.selection = gr.select(args.grid, args.dtype)
    if args.only:
        wanted = [t.lower() for t in args.only]
        args.selection = [(g, c) for g, c in args.selection
                          if any(t in c.label().lower() for t in wanted)]
        if not args.selection:
            parser.error(f"--only {' / '.join(args.only)}: no row's label contains it "
                         "(see --list)")
    if args.methods is None:
        args.methods = list(st.QUICK_METHODS if args.quick else st.METHODS)
    if args.repeats is None:
        args.repeats = 7 if args.quick else 15
    args.warmup_replays = 1 if args.quick else 3
    args.ceiling_repeats = 5 if args.quick else 10
    return args


def settings_of(args) -> dict:
    return {"grid": "custom" if args.shape else args.grid, "dtype": args.dtype,
            "methods": list(args.methods), "repeats": args.repeats, "quick": bool(args.quick),
            "touch_gib": args.touch_gib, "replica_gib": args.replica_gib,
            "ceiling_gib": args.ceiling_gib, "seed": args.seed, "only": args.only}


def list_rows(args, out=None) -> None:
    """The rows a run would measure, with what each reads and who can run it."""
    out = sys.stdout if out is None else out
    for grid, case in args.selection:
        refused = [m for m in args.methods if support.refusal(m, case)]
        line = f"{grid:<6} {case.label():<72} KV {case.kv_read_bytes() / 1e6:9.1f} MB"
        if refused:
            line += "  (unsupported: " + ", ".join(refused) + ")"
        print(line, file=out)
    print(f"{len(args.selection)} rows, {len(runner.unique_cases(args.selection))} to measure; "
          f"methods: {', '.join(args.methods)}", file=out)


def write_outputs(rep, args, out=None, err=None):
    """The table on ``out`` (stdout); JSON / CSV / PNG files when asked, noted on ``err``."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    print(rpt.format_table(rep), file=out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(rpt.to_json(rep))
        print(f"wrote {args.json}", file=err)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(rpt.to_csv(rep))
        print(f"wrote {args.csv}", file=err)
    if args.png:
        from .plot import PlotUnavailable, write_png
        try:
            how = write_png(rep, args.png)
            print(f"wrote {args.png} ({how})", file=err)
        except PlotUnavailable as e:
            print(f"no plot written to {args.png}: {e}", file=err)
        except Exception as e:
            print(f"could not write {args.png}: {runner.brief(e)}", file=err)


def exit_code(rep, args) -> int:
    for row in rep["rows"]:
        for m in st.OURS_ALL:
            res = row["results"].get(m)
            if res is not None and res.get("status") == "FAILED":
                return 1
    if args.require_bar and rep["bar"]["all"] is not True:
        return 3
    return 0


def run(args, gpu, mt, data_mod, read_kernel, out=None, err=None) -> int:
    """One run with the given device modules (the real ones, or the tests' fakes)."""
    n_cases = len(runner.unique_cases(args.selection))
    bar = progress(1 + n_cases * len(args.methods), enabled=not args.no_progress, stream=err)
    try:
        bar.set_description("read ceiling")
        measured = runner.measure_ceiling(int(args.ceiling_gib * GIB), args.ceiling_repeats,
                                          args.warmup_replays, gpu, read_kernel,
                                          use_kernel=not args.no_read_kernel)
        bar.update()
        rows = runner.run_all(args.selection, args, runner.planning_gbps(measured), bar, gpu,
                              mt, data_mod)
    finally:
        bar.close()
    info = {**gpu.device_info(), **meta.commit_info(), "host": meta.host_info(),
            "versions": mt.versions(),
            "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    rep = rpt.build_report(settings_of(args), info, args.methods, measured, rows,
                           min_touched=int(args.touch_gib * GIB))
    write_outputs(rep, args, out=out, err=err)
    return exit_code(rep, args)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:          # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    if args.list:
        list_rows(args)
        return 0
    if args.compare:
        from . import compare
        try:
            old, new = (compare.load(p) for p in args.compare)
        except (OSError, ValueError) as e:
            print(f"flashdecoding bench --compare: {e}", file=sys.stderr)
            return 2
        print(compare.format_compare(old, new))
        return 0
    try:
        import torch
    except ImportError as e:
        print(f"flashdecoding bench needs PyTorch with CUDA: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("flashdecoding bench needs a CUDA GPU (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    from . import data as data_mod
    from . import gpu
    from . import methods as mt
    from . import read_kernel

    torch.cuda.init()
    return run(args, gpu, mt, data_mod, read_kernel)
