"""The read ceiling a run reports, from what it measured: the project's read
kernel (read_kernel.py), torch's reduction and copy, and the methods
themselves.  The rule: the ceiling is the fastest read rate seen in the run,
so no row ever shows more than 100% and a ceiling is never below the best
method's bandwidth.

Pure Python (no torch): the CPU tests check the rule and the notes.
"""

from __future__ import annotations

from . import shapes as shp
from . import stats as st


def best_method(rows: list, min_touched: int):
    """(gbps, method, row label) of the fastest ok result over rows whose
    rotation read at least ``min_touched`` bytes per pass (smaller rotations
    may partly live in L2 and do not say what HBM streams), or None."""
    best = None
    for row in rows:
        if row.get("touched_bytes", 0) < min_touched:
            continue
        for name, res in row["results"].items():
            if st.is_ok(res) and res.get("gbps") is not None:
                if best is None or res["gbps"] > best[0]:
                    best = (res["gbps"], name, row["case"].label())
    return best


def final_ceiling(measured: dict, rows: list, min_touched: int) -> dict:
    """The ceiling of the run.

    ``measured``: ``{"read_kernel": {"status": "ok", "gbps", ...} or
    {"status": <why not>, "note"}, "torch_sum_gbps", "torch_copy_gbps", "bytes"}``.
    Returns ``measured`` plus ``gbps`` (used for floors and %), ``source``
    ("read kernel", "torch sum" or "method"), ``lower_bound`` (no read kernel
    result stands behind it) and ``notes``.
    """
    out = dict(measured)
    notes = []
    kernel = measured.get("read_kernel") or {}
    candidates = []
    if kernel.get("status") == "ok" and kernel.get("gbps"):
        candidates.append((kernel["gbps"], "read kernel"))
    else:
        why = kernel.get("note") or kernel.get("status") or "not run"
        notes.append(f"the read kernel did not run ({why}); the ceiling is a lower bound")
    if measured.get("torch_sum_gbps"):
        candidates.append((measured["torch_sum_gbps"], "torch sum"))
    best = best_method(rows, min_touched)
    out["best_method"] = (None if best is None else
                          {"gbps": best[0], "method": best[1], "row": best[2]})
    if best is not None:
        candidates.append((best[0], "method"))
    if not candidates:
        raise ValueError("no read rate measured: nothing to use as a ceiling")
    gbps, source = max(candidates, key=lambda c: c[0])
    if source == "method":
        beaten = [f"{n} {g:.0f} GB/s" for g, n in candidates if n != "method"]
        notes.append(f"{best[1]} on {best[2]} streamed {best[0]:.0f} GB/s, faster than "
                     + (", ".join(beaten) or "anything else measured")
                     + f": the ceiling is {best[0]:.0f} GB/s")
    elif source == "torch sum" and kernel.get("status") == "ok":
        notes.append(f"torch's reduction ({gbps:.0f} GB/s) read faster than the read "
                     f"kernel ({kernel['gbps']:.0f} GB/s): the ceiling is {gbps:.0f} GB/s")
    out.update(gbps=gbps, source=source, notes=notes,
               lower_bound=kernel.get("status") != "ok")
    return out


def apply_ceiling(rows: list, gbps: float) -> None:
    """Floor µs of every row and % of the ceiling of every ok result."""
    for row in rows:
        row["floor_us"] = shp.floor_us(row["bytes"], gbps)
        for res in row["results"].values():
            if st.is_ok(res) and res.get("gbps") is not None:
                res["pct"] = 100.0 * res["gbps"] / gbps
