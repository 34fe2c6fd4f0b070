"""Benchmark statistics: medians, geomeans, the best peer of a row, and each
row's comparison with the row it is measured against (paged with contiguous,
fp8 with 16-bit, ...).

Pure Python (no torch).  A *result* is a dict with at least ``status`` ("ok",
"FAILED", "unsupported", "error", "n/a") and, when ok, ``us``, ``gbps`` and
(once the ceiling is final) ``pct``.
"""

from __future__ import annotations

import math
import statistics

OURS = "flashdecoding"
# Ours with batch invariance on: shown for its cost, never a peer.
OURS_BATCH_INVARIANT = "flashdecoding-bi"
OURS_ALL = (OURS, OURS_BATCH_INVARIANT)
SDPA_METHODS = ("sdpa-flash", "sdpa-cudnn")
FLASHINFER_METHODS = ("fi-cc", "fi-tc")
# Every method the benchmark knows: ours, the peers, then ours batch-invariant.
METHODS = (OURS,) + SDPA_METHODS + FLASHINFER_METHODS + (OURS_BATCH_INVARIANT,)
PEERS = SDPA_METHODS + FLASHINFER_METHODS
# What --quick runs unless --methods says otherwise.
QUICK_METHODS = (OURS, "sdpa-cudnn")


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


def is_ok(res) -> bool:
    return res is not None and res.get("status") == "ok" and res.get("us") is not None


def best_peer(results: dict):
    """(method, result) of the fastest peer that ran ok, or (None, None)."""
    best = (None, None)
    for name, res in results.items():
        if name in OURS_ALL or not is_ok(res):
            continue
        if best[1] is None or res["us"] < best[1]["us"]:
            best = (name, res)
    return best


def ratio_to_best_peer(results: dict):
    """ours µs / best peer µs for one row, or None if either is missing."""
    name, peer = best_peer(results)
    mine = results.get(OURS)
    if peer is None or not is_ok(mine):
        return None
    return mine["us"] / peer["us"]


def row_meets_peer(results: dict, tie: float, tie_peer_pct: float):
    """True/False: ours <= best peer, or within ``tie`` of it where the best peer
    streams at >= ``tie_peer_pct`` of the ceiling; None when it cannot be judged."""
    r = ratio_to_best_peer(results)
    if r is None:
        return None
    if r <= 1.0:
        return True
    _, peer = best_peer(results)
    return bool(peer.get("pct") is not None and peer["pct"] >= tie_peer_pct and r <= tie)


def compare_with_baselines(rows: list, baseline_of) -> None:
    """Fill ``row["baseline"]`` for every row: the row its time is compared with
    (``baseline_of(case) -> (case, kind) | None``), ours there, and ours here /
    ours there.  A baseline outside the run is marked missing."""
    ours_by_key = {}
    for row in rows:
        res = row["results"].get(OURS)
        if is_ok(res):
            ours_by_key.setdefault(row["case"].key(), res["us"])
    for row in rows:
        found = baseline_of(row["case"])
        if found is None:
            row["baseline"] = None
            continue
        base, kind = found
        base_us = ours_by_key.get(base.key())
        mine = row["results"].get(OURS)
        ratio = mine["us"] / base_us if (is_ok(mine) and base_us) else None
        row["baseline"] = {"kind": kind, "label": base.label(), "ours_us": base_us,
                           "ratio": ratio, "missing": base_us is None}


def unique_rows(rows: list) -> list:
    """Rows with distinct measurements (a case in two grids is one measurement)."""
    seen, out = set(), []
    for row in rows:
        k = row["case"].key()
        if k not in seen:
            seen.add(k)
            out.append(row)
    return out
