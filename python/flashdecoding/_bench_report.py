"""Benchmark output: the text table, the bar check lines, JSON and CSV.

Pure Python (no torch).  Input is the *report* dict built by bench.py:

    {"meta": {...}, "ceiling": {"copy_gbps", "read_gbps", "used"}, "dtype",
     "methods": [names], "rows": [{"shape": Shape, "kv_bytes", "bytes",
     "floor_us", "results": {method: result}}], ...}
"""

from __future__ import annotations

import csv
import io
import json
import math

from . import _bench_stats as st

CELL = 18


def _verdict(v):
    return {True: "PASS", False: "FAIL", None: "n/j"}[v]


def format_cell(res) -> str:
    if res is None:
        return "-"
    status = res.get("status")
    if status == "ok":
        return f"{_us(res['us'])} {res['gbps']:5.0f} {res['pct']:3.0f}%"
    if status == "FAILED":
        err = res.get("rel_err")
        return "FAILED" + (f" {err:.1e}" if isinstance(err, float) else "")
    return str(status)


def _us(x, width=7):
    """µs with 2 decimals under 10 µs, else 1."""
    return f"{x:{width}.2f}" if x < 10 else f"{x:{width}.1f}"


def format_table(report: dict) -> str:
    methods = report["methods"]
    rows = report["rows"]
    ceil = report["ceiling"]
    lines = []
    info = report.get("meta", {})
    commit = info.get("commit")
    lines.append(
        f"flashdecoding bench on {info.get('device', '?')} ({info.get('sm_count', '?')} SMs), "
        f"commit {commit[:12] if commit else 'unknown'}"
        + (" (dirty)" if info.get("dirty") else ""))
    lines.append(
        f"HBM ceiling (same process): read-only reduction {ceil['read_gbps']:.0f} GB/s"
        f" <- used for floor and %; copy {ceil['copy_gbps']:.0f} GB/s (read+write)")
    lines.append(
        f"dtype {report['dtype']}; per method: us per call (CUDA-graph replay over rotated KV"
        f" replicas, median of {report['repeats']}), GB/s of problem bytes, % of the read ceiling")
    shape_w = max([len("shape")] + [len(r["shape"].label()) for r in rows])
    head = f"{'shape':<{shape_w}} {'KV MB':>7} {'floor':>6}"
    sub = f"{'':<{shape_w}} {'':>7} {'us':>6}"
    for m in methods:
        head += f" | {m[:CELL]:<{CELL}}"
        sub += f" | {'us':>7} {'GB/s':>5} {'%':>4}"
    head += " | ours/best peer"
    sub += " |"
    lines.append(head)
    lines.append(sub)
    lines.append("-" * len(head))
    notes = []
    for row in rows:
        line = (f"{row['shape'].label():<{shape_w}} {row['kv_bytes'] / 1e6:7.1f}"
                f" {_us(row['floor_us'], 6)}")
        for m in methods:
            res = row["results"].get(m)
            line += f" | {format_cell(res):>{CELL}}"
            if res is not None and res.get("status") != "ok" and res.get("note"):
                notes.append(f"  {row['shape'].label()} {m}: {res['status']}: {res['note']}")
        r = st.ratio_to_best_peer(row["results"])
        name, _ = st.best_peer(row["results"])
        line += " | " + (f"{r:5.2f} ({name})" if r is not None else "  -")
        lines.append(line)
    lines.append("-" * len(head))
    g = report["bar"]["geomean"]
    lines.append(
        "geomean(ours / best peer): "
        + (f"{g['value']:.3f}" if g.get("value") is not None else "-")
        + f" over {g['n']}/{g['of']} rows")
    lines.append(format_bar(report["bar"]))
    if notes:
        lines.append("notes:")
        lines.extend(notes)
    return "\n".join(lines)


def format_bar(bar: dict) -> str:
    """The bar check: one summary line, then one line per criterion
    (PASS / FAIL / n/j = not judged, e.g. a method missing on a row)."""
    parts = [
        ("every row <= best peer (1.02x tie where peer >= 95%)", bar["rows_vs_best_peer"]),
        ("geomean(ours / best peer) <= 0.90", bar["geomean"]),
        ("rows with KV > 128 MB at >= 92% of ceiling", bar["big_kv_pct"]),
        ("B=1 Hq=32 Hkv=8 K=512 D=128 <= 5 us", bar["latency"]),
    ]
    lines = [f"PERF.md bar: {_verdict(bar['all'])}"]
    lines += [f"  {_verdict(c['pass']):4} {name}: {c['detail']}" for name, c in parts]
    return "\n".join(lines)


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
        row["label"] = src["shape"].label()
        row["ratio_to_best_peer"] = st.ratio_to_best_peer(src["results"])
        row["best_peer"] = st.best_peer(src["results"])[0]
    return json.dumps(data, indent=2, sort_keys=False)


CSV_FIELDS = ["label", "B", "Hq", "Hkv", "K", "D", "dtype", "kv_bytes", "bytes",
              "floor_us", "method", "status", "us", "gbps", "pct", "rel_err",
              "ratio_to_best_peer", "note"]


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in report["rows"]:
        ratio = st.ratio_to_best_peer(row["results"])
        for m in report["methods"]:
            res = row["results"].get(m) or {"status": "-"}
            rec = {"label": row["shape"].label(), **row["shape"].as_dict(),
                   "dtype": report["dtype"], "kv_bytes": row["kv_bytes"],
                   "bytes": row["bytes"], "floor_us": f"{row['floor_us']:.3f}",
                   "method": m, "status": res.get("status"),
                   "us": _fmt(res.get("us")), "gbps": _fmt(res.get("gbps")),
                   "pct": _fmt(res.get("pct")), "rel_err": _fmt(res.get("rel_err"), "e"),
                   "ratio_to_best_peer": _fmt(ratio) if m == st.OURS else "",
                   "note": res.get("note") or ""}
            w.writerow(rec)
    return buf.getvalue()


def _fmt(x, kind="f"):
    if x is None:
        return ""
    return f"{x:.4e}" if kind == "e" else f"{x:.4f}"
