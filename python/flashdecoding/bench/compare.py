"""Two runs side by side (``--compare OLD.json NEW.json``): per row, ours in the
new run over ours in the old, for comparing two builds measured back to back
on the same GPU.  Compares µs, not %: each run measures its own ceiling.

Pure Python (no torch, no GPU).
"""

from __future__ import annotations

import json

from . import stats as st

SLOWER = 1.01   # a row slower by more than 1% is flagged


def load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "rows" not in data:
        raise ValueError(f"{path}: not a flashdecoding bench JSON (no rows)")
    return data


def times(report: dict, method: str = st.OURS) -> dict:
    """{row label: µs of ``method``} over the rows where it ran ok."""
    out = {}
    for row in report["rows"]:
        res = (row.get("results") or {}).get(method) or {}
        if res.get("status") == "ok" and res.get("us"):
            out.setdefault(row["label"], res["us"])
    return out


def compare(old: dict, new: dict, method: str = st.OURS):
    """[(label, old µs, new µs, new / old)] for the rows both runs measured, in
    the new run's order; and the labels only one of them has."""
    a, b = times(old, method), times(new, method)
    both = [(label, a[label], b[label], b[label] / a[label]) for label in b if label in a]
    only = sorted(set(a) ^ set(b))
    return both, only


def format_compare(old: dict, new: dict, method: str = st.OURS) -> str:
    both, only = compare(old, new, method)
    commits = [(r.get("meta") or {}).get("commit") or "?" for r in (old, new)]
    lines = [f"{method}: {commits[1][:12]} (new) / {commits[0][:12]} (old), us per call"]
    width = max([len("row")] + [len(label) for label, *_ in both])
    lines.append(f"{'row':<{width}} {'old us':>9} {'new us':>9} {'new/old':>8}")
    for label, a, b, r in both:
        flag = "  slower" if r > SLOWER else ("  faster" if r < 1 / SLOWER else "")
        lines.append(f"{label:<{width}} {a:9.2f} {b:9.2f} {r:8.3f}{flag}")
    g = st.geomean([r for *_, r in both])
    slower = [label for label, *_, r in both if r > SLOWER]
    lines.append(f"geomean(new / old) {g:.3f} over {len(both)} rows" if g is not None
                 else "no row in both runs")
    lines.append(f"slower by more than {round((SLOWER - 1) * 100)}%: "
                 + (", ".join(slower) if slower else "none"))
    if only:
        lines.append("in one run only: " + "; ".join(only))
    return "\n".join(lines)
