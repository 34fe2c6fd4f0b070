"""Benchmark statistics: medians, ratio to the best peer, geomean, PERF.md's bar.

Pure Python (no torch).  A *result* is a dict with at least ``status`` ("ok",
"FAILED", "unsupported", "error", "n/a") and, when ok, ``us`` and ``pct``.
"""

from __future__ import annotations

import math
import statistics

OURS = "flashdecoding"
# Ours with PlanPreference.BATCH_INVARIANT: shown for its cost, never a peer.
OURS_BATCH_INVARIANT = "flashdecoding-bi"
OURS_ALL = (OURS, OURS_BATCH_INVARIANT)
# Every method the benchmark knows: ours, the peers, then ours batch-invariant.
METHODS = (OURS, "sdpa-flash", "sdpa-cudnn", "fi-cc", "fi-tc", OURS_BATCH_INVARIANT)
FLASHINFER_METHODS = ("fi-cc", "fi-tc")

# PERF.md's bar.
BAR_GEOMEAN = 0.90
BAR_TIE = 1.02            # a tie within run-to-run spread ...
BAR_TIE_PEER_PCT = 95.0   # ... counts where the best peer is at >= 95% of the ceiling
BAR_BIG_KV_BYTES = 128 * 10**6   # "more than 128 MB of KV" (decimal, like GB/s)
BAR_BIG_KV_PCT = 92.0
BAR_LATENCY_US = 5.0


def median(xs):
    xs = list(xs)
    if not xs:
        raise ValueError("median of nothing")
    return statistics.median(xs)


def geomean(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    if any(x <= 0 for x in xs):
        raise ValueError("geomean needs positive values")
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _ok(res):
    return res is not None and res.get("status") == "ok" and res.get("us") is not None


def best_peer(results: dict, ours: str = OURS):
    """(method, result) of the fastest peer that ran ok, or (None, None)."""
    best = (None, None)
    for name, res in results.items():
        if name == ours or name in OURS_ALL or not _ok(res):
            continue
        if best[1] is None or res["us"] < best[1]["us"]:
            best = (name, res)
    return best


def ratio_to_best_peer(results: dict, ours: str = OURS):
    """ours µs / best peer µs for one row, or None if either is missing."""
    name, peer = best_peer(results, ours)
    mine = results.get(ours)
    if peer is None or not _ok(mine):
        return None
    return mine["us"] / peer["us"]


def row_meets_peer(results: dict, ours: str = OURS):
    """True/False: ours ≤ best peer (or a ≤1.02× tie where the best peer is at
    ≥95% of the ceiling); None when it cannot be judged."""
    r = ratio_to_best_peer(results, ours)
    if r is None:
        return None
    if r <= 1.0:
        return True
    _, peer = best_peer(results, ours)
    return bool(peer.get("pct") is not None and peer["pct"] >= BAR_TIE_PEER_PCT
                and r <= BAR_TIE)


def check_bar(rows: list, ours: str = OURS, latency_shape=None) -> dict:
    """Judge PERF.md's bar over ``rows``.

    ``rows``: list of dicts with ``shape`` (a Shape), ``kv_bytes`` and
    ``results`` ({method: result}).  Returns a dict of the four criteria, each
    ``{"pass": True/False/None, "detail": str}``, plus ``"all"``.  None means
    not judged (e.g. ours or every peer missing on a row).
    """
    out = {}

    # 1. every row at or below the best peer
    bad, unjudged = [], []
    for row in rows:
        v = row_meets_peer(row["results"], ours)
        if v is None:
            unjudged.append(row["shape"].label())
        elif not v:
            r = ratio_to_best_peer(row["results"], ours)
            bad.append(f"{row['shape'].label()} ({r:.2f}x)")
    if bad:
        out["rows_vs_best_peer"] = {"pass": False, "detail": "slower: " + "; ".join(bad)}
    elif unjudged:
        out["rows_vs_best_peer"] = {"pass": None,
                                   "detail": "not judged: " + "; ".join(unjudged)}
    else:
        out["rows_vs_best_peer"] = {"pass": True, "detail": f"{len(rows)} rows"}

    # 2. geomean of ours / best peer
    ratios = [ratio_to_best_peer(row["results"], ours) for row in rows]
    judged = [r for r in ratios if r is not None]
    g = geomean(judged)
    if g is None:
        out["geomean"] = {"pass": None, "value": None, "n": 0, "of": len(rows),
                          "detail": "no row with ours and a peer"}
    else:
        complete = len(judged) == len(rows)
        out["geomean"] = {
            "pass": (g <= BAR_GEOMEAN) if complete else None,
            "value": g, "n": len(judged), "of": len(rows),
            "detail": f"{g:.3f} over {len(judged)}/{len(rows)} rows (bar <= {BAR_GEOMEAN})",
        }

    # 3. big-KV rows at >= 92% of the ceiling
    big = [row for row in rows if row["kv_bytes"] > BAR_BIG_KV_BYTES]
    low, missing = [], []
    for row in big:
        res = row["results"].get(ours)
        if not _ok(res):
            missing.append(row["shape"].label())
        elif res["pct"] < BAR_BIG_KV_PCT:
            low.append(f"{row['shape'].label()} ({res['pct']:.1f}%)")
    if not big:
        out["big_kv_pct"] = {"pass": None, "detail": "no row with KV > 128 MB"}
    elif low:
        out["big_kv_pct"] = {"pass": False, "detail": "below 92%: " + "; ".join(low)}
    elif missing:
        out["big_kv_pct"] = {"pass": None, "detail": "not measured: " + "; ".join(missing)}
    else:
        out["big_kv_pct"] = {"pass": True, "detail": f"{len(big)} rows with KV > 128 MB"}

    # 4. the latency row
    lat = [row for row in rows if latency_shape is not None and row["shape"] == latency_shape]
    if not lat:
        out["latency"] = {"pass": None, "detail": "latency shape not in this run"}
    else:
        res = lat[0]["results"].get(ours)
        if not _ok(res):
            out["latency"] = {"pass": None, "detail": "not measured"}
        else:
            out["latency"] = {"pass": res["us"] <= BAR_LATENCY_US,
                              "detail": f"{res['us']:.2f} us (bar <= {BAR_LATENCY_US} us)"}

    verdicts = [v["pass"] for v in out.values()]
    if any(v is False for v in verdicts):
        out["all"] = False
    elif all(v is True for v in verdicts):
        out["all"] = True
    else:
        out["all"] = None
    return out
