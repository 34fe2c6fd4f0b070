"""The benchmark plot: % of the read ceiling per row and method, one panel per
grid, horizontal grouped bars.  Needs matplotlib (the ``bench`` extra:
``pip install 'flashdecoding[bench]'``); without it :func:`write_png` raises
:class:`PlotUnavailable` saying so.  Pure Python apart from matplotlib."""

from __future__ import annotations

from .report import GRID_TITLES

COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f"]
INSTALL_HINT = "pip install 'flashdecoding[bench]' (or pip install matplotlib)"


class PlotUnavailable(Exception):
    """matplotlib cannot be imported (the message says how to install it)."""


def plot_data(report: dict):
    """{grid: (labels, methods, pct)} with pct[i][j] = % of the ceiling of method
    j on row i of that grid, or None when that method did not run ok there."""
    methods = list(report["methods"])
    out = {}
    for row in report["rows"]:
        labels, _, pct = out.setdefault(row["grid"], ([], methods, []))
        labels.append(row["case"].label())
        line = []
        for m in methods:
            res = row["results"].get(m)
            line.append(res.get("pct") if res and res.get("status") == "ok" else None)
        pct.append(line)
    return out


def title(report: dict) -> str:
    meta = report.get("meta", {})
    ceil = report["ceiling"]
    commit = (meta.get("commit") or "")[:12]
    return (f"flashdecoding bench: {meta.get('device', '?')}"
            + (f", {commit}" if commit else "")
            + f"; % of the read ceiling ({ceil['gbps']:.0f} GB/s)")


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        raise PlotUnavailable(f"matplotlib is not installed ({type(e).__name__}: {e}); "
                              + INSTALL_HINT) from None
    return plt


def write_png(report: dict, path: str) -> str:
    """Write the plot to ``path``; returns a short description of it."""
    plt = _pyplot()
    data = plot_data(report)
    grids = list(data)
    n_methods = max(1, len(report["methods"]))
    heights = [0.8 + (0.12 * n_methods + 0.1) * len(data[g][0]) for g in grids]
    total = sum(heights) + 1.0
    fig, axes = plt.subplots(len(grids), 1, figsize=(12, total), dpi=110,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, g in zip(axes[:, 0], grids):
        labels, methods, pct = data[g]
        n = len(labels)
        h = 0.8 / n_methods
        for j, name in enumerate(methods):
            ys = [i - 0.4 + h * (j + 0.5) for i in range(n)]
            xs = [p[j] if p[j] is not None else 0.0 for p in pct]
            ax.barh(ys, xs, height=h, label=name, color=COLORS[j % len(COLORS)])
        ax.axvline(100.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(n))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_ylim(n - 0.5, -0.5)                  # first row on top
        ax.set_xlim(0, 105)
        ax.set_xlabel("% of the read ceiling (a missing bar: did not run)")
        ax.set_title(GRID_TITLES.get(g, g), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title(report), fontsize=10, y=1 - 0.15 / total)
    fig.legend(handles, names, fontsize=7, ncol=min(n_methods, 6), loc="upper center",
               bbox_to_anchor=(0.5, 1 - 0.4 / total))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / total))
    fig.savefig(path)
    plt.close(fig)
    return f"matplotlib, {sum(len(d[0]) for d in data.values())} rows"
