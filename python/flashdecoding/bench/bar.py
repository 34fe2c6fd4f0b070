"""The performance bar: its thresholds, the text of each criterion (printed as
"bar:" lines and written out in docs/PERFORMANCE.md, which a CPU test keeps
equal to this file), and the check of a run against it.

Pure Python (no torch).
"""

from __future__ import annotations

from . import grids as gr
from . import stats as st
from . import support
from .shapes import Case

BAR_DTYPE = "bf16"               # the bar's geomeans are over the bf16 rows
TIE = 1.02                       # a tie within run-to-run spread ...
TIE_PEER_PCT = 95.0              # ... counts where the best peer is at >= 95% of the ceiling
GEOMEAN_PERF = 0.85
GEOMEAN_ZOO = 0.88
BIG_KV_BYTES = 128 * 10**6       # "more than 128 MB of KV" (decimal, like GB/s)
BIG_KV_PCT = 95.0
LATENCY_US = 4.0
PAGED_LIMITS = {16: 1.03, 1: 1.08}   # paged / contiguous, by page size
CAPACITY_LIMIT = 1.10            # table sized for 32k keys / exactly sized table
FP8_LIMIT = 0.55                 # fp8 / 16-bit time where the 16-bit KV is > 128 MB
F16_LIMIT = 1.02                 # f16 / bf16: no slower, within run-to-run spread

LATENCY_CASE = Case(gr.LATENCY_SHAPE, dtype=BAR_DTYPE)

# (key, text): the criteria in the order they are printed.
CRITERIA = (
    ("rows_vs_best_peer",
     f"every row at or below the best peer (a tie within {TIE:.2f}x counts where that "
     f"peer is at >= {TIE_PEER_PCT:.0f}% of the ceiling)"),
    ("geomean_perf",
     f"geomean(ours / best peer) <= {GEOMEAN_PERF:.2f} over the perf grid ({BAR_DTYPE} rows)"),
    ("geomean_zoo",
     f"geomean(ours / best peer) <= {GEOMEAN_ZOO:.2f} over the zoo ({BAR_DTYPE} rows)"),
    ("big_kv_pct",
     f"every row with more than {BIG_KV_BYTES // 10**6} MB of KV at >= {BIG_KV_PCT:.0f}% "
     "of the read ceiling"),
    ("latency", f"B=1 32/8 K=512 D=128 ({BAR_DTYPE}) in <= {LATENCY_US:.1f} us"),
    ("paged",
     f"paged page 16 within {round((PAGED_LIMITS[16] - 1) * 100)}% of the same shape "
     f"contiguous, page 1 within {round((PAGED_LIMITS[1] - 1) * 100)}%"),
    ("paged_capacity",
     f"a block table sized for {gr.CAPACITY_KEYS // 1024}k keys within "
     f"{round((CAPACITY_LIMIT - 1) * 100)}% of the exactly sized table"),
    ("fp8",
     f"fp8 rows over {BIG_KV_BYTES // 10**6} MB (16-bit equivalent) in <= {FP8_LIMIT:.2f}x "
     "flashdecoding's 16-bit time of the same shape"),
    ("f16", f"f16 no slower than bf16 (f16 / bf16 <= {F16_LIMIT:.2f})"),
)
TEXT = dict(CRITERIA)


def _some(labels, most=3) -> str:
    """The first few of ``labels``, and how many more."""
    shown = "; ".join(labels[:most])
    return shown + (f"; and {len(labels) - most} more" if len(labels) > most else "")


def _verdict(bad, unjudged, n, what="rows"):
    if bad:
        return {"pass": False, "detail": "; ".join(bad)}
    if unjudged:
        return {"pass": None, "detail": f"not judged ({len(unjudged)} of {n}): "
                + _some(unjudged)}
    if not n:
        return {"pass": None, "detail": f"no such {what} in this run"}
    return {"pass": True, "detail": f"{n} {what}"}


def _rows_vs_peer(rows):
    bad, unjudged, n, no_peer = [], [], 0, []
    for row in rows:
        res = row["results"]
        if support.no_peer_can_run(row["case"], res):
            no_peer.append(row["case"].label())
            continue
        v = st.row_meets_peer(res, TIE, TIE_PEER_PCT)
        if v is None:
            unjudged.append(row["case"].label())
        elif not v:
            bad.append(f"{row['case'].label()} ({st.ratio_to_best_peer(res):.2f}x)")
        n += 1
    out = _verdict(["slower: " + "; ".join(bad)] if bad else [], unjudged, n)
    if no_peer:
        out["detail"] += f" ({len(no_peer)} rows no peer can run)"
    return out


def _geomean(rows, limit):
    rows = [r for r in rows if r["case"].dtype == BAR_DTYPE
            and not support.no_peer_can_run(r["case"], r["results"])]
    ratios = [st.ratio_to_best_peer(r["results"]) for r in rows]
    judged = [x for x in ratios if x is not None]
    g = st.geomean(judged)
    if g is None:
        return {"pass": None, "value": None, "n": 0, "of": len(rows),
                "detail": "no row with ours and a peer"}
    complete = len(judged) == len(rows)
    return {"pass": (g <= limit) if complete else None, "value": g, "n": len(judged),
            "of": len(rows), "detail": f"{g:.3f} over {len(judged)}/{len(rows)} rows"}


def _big_kv(rows):
    bad, unjudged, n = [], [], 0
    for row in rows:
        if row["case"].kv_read_bytes() <= BIG_KV_BYTES:
            continue
        n += 1
        res = row["results"].get(st.OURS)
        if not st.is_ok(res) or res.get("pct") is None:
            unjudged.append(row["case"].label())
        elif res["pct"] < BIG_KV_PCT:
            bad.append(f"{row['case'].label()} ({res['pct']:.1f}%)")
    return _verdict(["below: " + "; ".join(bad)] if bad else [], unjudged, n,
                    "rows with KV > 128 MB")


def _latency(rows):
    lat = [r for r in rows if r["case"].key() == LATENCY_CASE.key()]
    if not lat:
        return {"pass": None, "detail": "the latency row is not in this run"}
    res = lat[0]["results"].get(st.OURS)
    if not st.is_ok(res):
        return {"pass": None, "detail": "not measured"}
    return {"pass": res["us"] <= LATENCY_US,
            "detail": f"{lat[0]['case'].label()}: {res['us']:.2f} us"}


def _ratio_rule(rows, select, limit_of, what):
    bad, unjudged, n = [], [], 0
    for row in rows:
        if not select(row["case"]):
            continue
        limit = limit_of(row["case"])
        if limit is None:
            continue
        n += 1
        b = row.get("baseline") or {}
        ratio = b.get("ratio")
        if ratio is None:
            unjudged.append(row["case"].label())
        elif ratio > limit:
            bad.append(f"{row['case'].label()} ({ratio:.3f}x > {limit:.2f}x)")
    return _verdict(["over: " + "; ".join(bad)] if bad else [], unjudged, n, what)


def _is_f16_twin(case) -> bool:
    found = gr.baseline_of(case)
    return case.dtype == "f16" and found is not None and found[1] == "bf16"


def check_bar(rows: list) -> dict:
    """Judge the bar over ``rows`` (dicts with ``grid``, ``case``, ``results``
    and, from :func:`stats.compare_with_baselines`, ``baseline``; ``pct`` in the
    results is against the run's final ceiling).  Returns one entry per
    criterion, ``{"pass": True/False/None, "detail", "text"}`` (None: not judged,
    e.g. a method or row missing), plus ``"all"``."""
    uniq = st.unique_rows(rows)
    out = {
        "rows_vs_best_peer": _rows_vs_peer(uniq),
        "geomean_perf": _geomean([r for r in rows if r["grid"] == gr.PERF], GEOMEAN_PERF),
        "geomean_zoo": _geomean([r for r in rows if r["grid"] == gr.ZOO], GEOMEAN_ZOO),
        "big_kv_pct": _big_kv(uniq),
        "latency": _latency(uniq),
        "paged": _ratio_rule(uniq, lambda c: c.paged and not c.table_keys,
                             lambda c: PAGED_LIMITS.get(c.page_size), "paged rows"),
        "paged_capacity": _ratio_rule(uniq, lambda c: c.paged and c.table_keys,
                                      lambda c: CAPACITY_LIMIT, "capacity-sized tables"),
        "fp8": _ratio_rule(uniq, lambda c: c.fp8 and c.kv_bytes_16bit() > BIG_KV_BYTES,
                           lambda c: FP8_LIMIT, "fp8 rows over 128 MB"),
        "f16": _ratio_rule(uniq, _is_f16_twin, lambda c: F16_LIMIT, "f16 rows with a bf16 twin"),
    }
    for key, text in CRITERIA:
        out[key]["text"] = text
    verdicts = [out[k]["pass"] for k, _ in CRITERIA]
    if any(v is False for v in verdicts):
        out["all"] = False
    elif all(v is True for v in verdicts):
        out["all"] = True
    else:
        out["all"] = None
    return out


def verdict_word(v) -> str:
    return {True: "PASS", False: "FAIL", None: "not judged"}[v]


def bar_lines(bar: dict) -> list:
    """The "bar:" lines: one per criterion, then the overall verdict."""
    lines = [f"bar: {verdict_word(bar[k]['pass']):<10} {text}: {bar[k]['detail']}"
             for k, text in CRITERIA]
    lines.append(f"bar: {verdict_word(bar['all'])} overall")
    return lines
