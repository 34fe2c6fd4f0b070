"""Running the rows: inputs and references once per row, then each method
prepared, checked against the reference and timed; rows that two grids share
are measured once.  The percentages wait for the run's final ceiling
(report.build_report).

The device modules come in as arguments (``gpu``, ``mt``, ``data_mod``), so
the CPU tests drive all of this with fakes.
"""

from __future__ import annotations

from . import shapes as shp
from . import stats as st
from . import support

GIB = 1 << 30


def brief(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:240]


def replicas_for(case, args, free_bytes: int, methods) -> int:
    """Replicas of ``case`` within ``--touch-gib`` / ``--replica-gib``, shrunk
    until the replicas, the page pools built from them (paged rows and
    FlashInfer) and the reference's float32 work fit in 80% of free memory."""
    r = shp.replicas_for(case, int(args.touch_gib * GIB), int(args.replica_gib * GIB))
    pooled = case.paged or any(m in st.FLASHINFER_METHODS for m in methods)

    def need(n):
        pools = int(1.1 * n * case.kv_read_bytes()) if pooled else 0
        return shp.replica_alloc_bytes(case, n) + pools + 2 * case.kv_alloc_bytes() + GIB

    while r > 2 and need(r) > 0.8 * free_bytes:
        r -= 1
    return r


def run_method(name, data, refs, n_calls, args, gpu, mt) -> dict:
    """Prepare, check, then time one method on one row; returns its result
    (µs and GB/s of the bytes the row moves; % comes with the final ceiling)."""
    case = data.case
    res = {"status": None}
    try:
        prep = mt.prepare(name, data)
    except mt.NotAvailable as e:
        return {**res, "status": "n/a", "note": str(e)[:240]}
    except mt.Unsupported as e:
        return {**res, "status": "unsupported", "note": str(e)[:240]}
    except Exception as e:
        return {**res, "status": "error", "note": "prepare: " + brief(e)}
    res["extra"] = prep.extra
    tol = shp.TOLERANCE[case.dtype]
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
        return {**res, "status": "error", "note": "check: " + brief(e)}
    res["rel_err"] = max(errs)
    res["tolerance"] = tol
    if not res["rel_err"] <= tol:
        return {**res, "status": "FAILED",
                "note": f"rel. error {res['rel_err']:.3e} > {tol:g} (not timed)"}
    try:
        samples = gpu.time_graph(prep.calls, n_calls, args.repeats, args.warmup_replays)
    except Exception as e:
        return {**res, "status": "error", "note": "timing: " + brief(e)}
    finally:
        del prep
    us = st.median(samples)
    return {**res, "status": "ok", "us": us, "gbps": shp.gbps_of(case.problem_bytes(), us),
            "samples_us": samples, "spread": (max(samples) - min(samples)) / us}


def run_case(case, args, plan_gbps, bar, gpu, mt, data_mod) -> dict:
    """Every method on one row: inputs and references once, then each method.
    ``plan_gbps`` (the measured ceiling) only sizes the graphs."""
    floor = shp.floor_us(case.problem_bytes(), plan_gbps)
    meas = {"results": {}}
    todo = []
    for m in args.methods:
        why = support.refusal(m, case)
        if why:
            meas["results"][m] = {"status": "unsupported", "note": why}
            bar.update()
        else:
            todo.append(m)
    R = replicas_for(case, args, gpu.free_bytes(), todo)
    n_calls = shp.calls_per_graph(R, floor)
    meas.update(replicas=R, calls_per_graph=n_calls, touched_bytes=R * case.kv_read_bytes())
    if not todo:
        return meas
    data = refs = None
    try:
        data = data_mod.CaseData(case, R, args.seed)
        refs = {r: data.reference(r, gpu) for r in sorted({0, R - 1})}
    except Exception as e:
        note = "inputs: " + brief(e)
        for m in todo:
            meas["results"][m] = {"status": "error", "note": note}
            bar.update()
        data = refs = None
        gpu.release_memory()
        return meas
    for m in todo:
        bar.set_description(f"{case.label()} {m}")
        meas["results"][m] = run_method(m, data, refs, n_calls, args, gpu, mt)
        gpu.release_memory()
        bar.update()
    data.release()
    data = refs = None
    gpu.release_memory()
    return meas


def unique_cases(selection):
    """The distinct measurements of ``selection`` ((grid, case) pairs), in order."""
    seen, out = set(), []
    for _, case in selection:
        if case.key() not in seen:
            seen.add(case.key())
            out.append(case)
    return out


def run_all(selection, args, plan_gbps, bar, gpu, mt, data_mod) -> list:
    """Rows of ``selection`` with their measurements (one run per distinct case)."""
    done = {}
    for case in unique_cases(selection):
        done[case.key()] = run_case(case, args, plan_gbps, bar, gpu, mt, data_mod)
    return [make_row(grid, case, done[case.key()]) for grid, case in selection]


def make_row(grid, case, meas) -> dict:
    """A table row: the case, what it moves, and its measurement (shared, not
    copied, between grids that hold the same case)."""
    return {"grid": grid, "case": case, "kv_bytes": case.kv_read_bytes(),
            "bytes": case.problem_bytes(), "replicas": meas.get("replicas"),
            "calls_per_graph": meas.get("calls_per_graph"),
            "touched_bytes": meas.get("touched_bytes", 0), "results": meas["results"]}


def measure_ceiling(nbytes: int, repeats: int, warmup: int, gpu, read_kernel,
                    use_kernel: bool = True) -> dict:
    """What the ceiling is chosen from: torch's reduction and copy, and the read
    kernel (or why it did not run: no NVRTC, an old GPU, a checksum mismatch)."""
    measured = gpu.torch_rates(nbytes, repeats, warmup)
    if not use_kernel:
        measured["read_kernel"] = {"status": "off", "note": "--no-read-kernel"}
        return measured
    try:
        measured["read_kernel"] = read_kernel.measure(nbytes, repeats, warmup)
    except Exception as e:
        measured["read_kernel"] = {"status": "unavailable", "note": brief(e)}
    return measured


def planning_gbps(measured: dict) -> float:
    """The rate the graphs are sized by before the run's final ceiling is known."""
    k = measured.get("read_kernel") or {}
    rates = [measured.get("torch_sum_gbps") or 0.0]
    if k.get("status") == "ok":
        rates.append(k["gbps"])
    return max(rates) or 1000.0
