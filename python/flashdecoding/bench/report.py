"""Benchmark output: the report dict (final ceiling, %, comparisons, bar), the
text table with its "bar:" lines, JSON and CSV.

Pure Python (no torch).  A report is

    {"meta": {...}, "settings": {...}, "methods": [names],
     "ceiling": {"gbps", "source", "notes", ...},
     "rows": [{"grid", "case": Case, "kv_bytes", "bytes", "floor_us",
               "results": {method: result}, "baseline": {...} | None}],
     "bar": {...}}
"""

from __future__ import annotations

import csv
import io
import json
import math

from . import bar as br
from . import ceiling as cl
from . import grids as gr
from . import stats as st
from . import support

CELL = 18
GRID_TITLES = {gr.PERF: "perf grid", gr.ZOO: "model zoo", gr.CUSTOM: "shapes asked for"}


def build_report(settings: dict, meta: dict, methods, measured_ceiling: dict, rows: list,
                 min_touched: int) -> dict:
    """The report of a run: the ceiling by the max rule, every % against it,
    each row against its baseline row, the bar."""
    ceiling = cl.final_ceiling(measured_ceiling, rows, min_touched)
    cl.apply_ceiling(rows, ceiling["gbps"])
    st.compare_with_baselines(rows, gr.baseline_of)
    bar = br.check_bar(rows)
    return {
        "tool": "flashdecoding bench",
        "meta": meta,
        "settings": settings,
        "methods": list(methods),
        "timing": ("CUDA events around CUDA-graph replays; each graph holds calls_per_graph "
                   "calls cycling over `replicas` KV replicas; us per call = replay / calls; "
                   "median of `repeats` replays"),
        "ceiling": ceiling,
        "rows": rows,
        "bar": bar,
    }


# ------------------------------------------------------------------ text

def _us(x, width=7):
    """µs with 2 decimals under 10 µs, else 1."""
    return f"{x:{width}.2f}" if x < 10 else f"{x:{width}.1f}"


def format_cell(res) -> str:
    if res is None:
        return "-"
    status = res.get("status")
    if status == "ok":
        pct = res.get("pct")
        return f"{_us(res['us'])} {res['gbps']:5.0f} " + (f"{pct:3.0f}%" if pct is not None
                                                           else "   -")
    if status == "FAILED":
        err = res.get("rel_err")
        return "FAILED" + (f" {err:.1e}" if isinstance(err, float) and math.isfinite(err)
                           else "")
    return str(status)


def format_baseline(b) -> str:
    if not b:
        return ""
    if b.get("ratio") is None:
        return f"- ({b['kind']}: not measured)"
    return f"{b['ratio']:.2f}x {b['kind']} ({_us(b['ours_us'], 1).strip()} us)"


def format_ratio(case, results) -> str:
    r = st.ratio_to_best_peer(results)
    if r is not None:
        return f"{r:5.2f} ({st.best_peer(results)[0]})"
    return "no peer" if support.no_peer_can_run(case, results) else "  -"


def ceiling_lines(ceil: dict) -> list:
    k = ceil.get("read_kernel") or {}
    parts = []
    if k.get("status") == "ok":
        parts.append(f"read kernel {k['gbps']:.0f} GB/s")
    if ceil.get("torch_sum_gbps"):
        parts.append(f"torch sum {ceil['torch_sum_gbps']:.0f}")
    if ceil.get("torch_copy_gbps"):
        parts.append(f"torch copy {ceil['torch_copy_gbps']:.0f} (read+write)")
    bound = " (a lower bound)" if ceil.get("lower_bound") else ""
    lines = [f"read ceiling {ceil['gbps']:.0f} GB/s from the {ceil['source']}{bound}"
             f" <- floors and %; measured: " + ", ".join(parts)]
    lines += [f"  note: {n}" for n in ceil.get("notes", [])]
    return lines


def _grid_table(rows, methods) -> list:
    label_w = max([len("row")] + [len(r["case"].label()) for r in rows])
    head = f"{'row':<{label_w}} {'KV MB':>8} {'floor':>6}"
    sub = f"{'':<{label_w}} {'':>8} {'us':>6}"
    for m in methods:
        head += f" | {m[:CELL]:<{CELL}}"
        sub += f" | {'us':>7} {'GB/s':>5} {'%':>4}"
    head += " | ours/best peer     | ours vs"
    sub += " |                    |"
    lines = [head, sub, "-" * len(head)]
    for row in rows:
        line = (f"{row['case'].label():<{label_w}} {row['kv_bytes'] / 1e6:8.1f}"
                f" {_us(row['floor_us'], 6)}")
        for m in methods:
            line += f" | {format_cell(row['results'].get(m)):>{CELL}}"
        line += f" | {format_ratio(row['case'], row['results']):<18} | {format_baseline(row.get('baseline'))}"
        lines.append(line.rstrip())
    lines.append("-" * len(head))
    return lines


def _notes(rows, methods) -> list:
    """What did not run, grouped: one line per (method, status, reason)."""
    groups = {}
    for row in st.unique_rows(rows):
        for m in methods:
            res = row["results"].get(m)
            if res is None or res.get("status") == "ok" or not res.get("note"):
                continue
            groups.setdefault((m, res["status"], res["note"]), []).append(row["case"].label())
    lines = []
    for (m, status, note), labels in groups.items():
        where = "; ".join(labels) if len(labels) <= 2 else f"{len(labels)} rows"
        lines.append(f"  {m}: {status} on {where}: {note}")
    return lines


def format_table(report: dict) -> str:
    methods = report["methods"]
    rows = report["rows"]
    info = report.get("meta", {})
    commit = info.get("commit")
    lines = [
        f"flashdecoding bench on {info.get('device', '?')} ({info.get('sm_count', '?')} SMs), "
        f"commit {commit[:12] if commit else 'unknown'}" + (" (dirty)" if info.get("dirty") else "")]
    lines += ceiling_lines(report["ceiling"])
    settings = report.get("settings", {})
    lines.append(
        "per method: us per call (CUDA-graph replay over rotated KV replicas, median of "
        f"{settings.get('repeats', '?')}), GB/s of the bytes the row moves, % of the read ceiling")
    grids = []
    for row in rows:
        if row["grid"] not in grids:
            grids.append(row["grid"])
    for g in grids:
        grid_rows = [r for r in rows if r["grid"] == g]
        lines.append("")
        lines.append(f"== {GRID_TITLES.get(g, g)} ({len(grid_rows)} rows)")
        lines += _grid_table(grid_rows, methods)
        key = {gr.PERF: "geomean_perf", gr.ZOO: "geomean_zoo"}.get(g)
        if key:
            gm = report["bar"][key]
            lines.append(f"geomean(ours / best peer), {br.BAR_DTYPE} rows: "
                         + (f"{gm['value']:.3f}" if gm.get("value") is not None else "-")
                         + f" over {gm['n']}/{gm['of']} rows")
    lines.append("")
    lines += br.bar_lines(report["bar"])
    notes = _notes(rows, methods)
    if notes:
        lines.append("notes:")
        lines += notes
    return "\n".join(lines)


# ------------------------------------------------------------------ JSON, CSV

def _jsonable(obj):
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):  # NaN / inf are not JSON
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def to_json(report: dict) -> str:
    data = _jsonable(report)
    for row, src in zip(data["rows"], report["rows"]):
        row["label"] = src["case"].label()
        row["ratio_to_best_peer"] = st.ratio_to_best_peer(src["results"])
        row["best_peer"] = st.best_peer(src["results"])[0]
    return json.dumps(data, indent=2, sort_keys=False)


CSV_FIELDS = ["grid", "label", "name", "B", "Hq", "Hkv", "K", "D", "dtype", "kv_dtype",
              "page_size", "max_pages", "ragged", "window", "sink_tokens", "sink_logits",
              "kv_bytes", "bytes", "floor_us", "method", "status", "us", "gbps", "pct",
              "rel_err", "ratio_to_best_peer", "baseline", "ratio_to_baseline", "note"]


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in report["rows"]:
        c = row["case"]
        ratio = st.ratio_to_best_peer(row["results"])
        b = row.get("baseline") or {}
        for m in report["methods"]:
            res = row["results"].get(m) or {"status": "-"}
            ours = m == st.OURS
            w.writerow({
                "grid": row["grid"], "label": c.label(), "name": c.name, **c.shape.as_dict(),
                "dtype": c.dtype, "kv_dtype": c.kv_dtype, "page_size": c.page_size,
                "max_pages": c.max_pages, "ragged": int(c.ragged), "window": c.window,
                "sink_tokens": c.sink_tokens, "sink_logits": int(c.sink_logits),
                "kv_bytes": row["kv_bytes"], "bytes": row["bytes"],
                "floor_us": _fmt(row.get("floor_us")), "method": m,
                "status": res.get("status"), "us": _fmt(res.get("us")),
                "gbps": _fmt(res.get("gbps")), "pct": _fmt(res.get("pct")),
                "rel_err": _fmt(res.get("rel_err"), "e"),
                "ratio_to_best_peer": _fmt(ratio) if ours else "",
                "baseline": b.get("label", "") if ours else "",
                "ratio_to_baseline": _fmt(b.get("ratio")) if ours else "",
                "note": res.get("note") or ""})
    return buf.getvalue()


def _fmt(x, kind="f"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.4e}" if kind == "e" else f"{x:.4f}"
