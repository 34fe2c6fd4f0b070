"""The benchmark plot: % of the read-only HBM ceiling per shape and method,
grouped bars.  matplotlib (Agg) when importable, else a small built-in PNG
rasterizer.  Pure Python apart from the optional matplotlib."""

from __future__ import annotations

PALETTE = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14),
           (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def plot_data(report: dict):
    """(labels, methods, pct) with pct[i][j] = % of ceiling of method j on row i,
    or None when that method did not run ok there."""
    labels = [row["shape"].label() for row in report["rows"]]
    methods = list(report["methods"])
    pct = []
    for row in report["rows"]:
        line = []
        for m in methods:
            res = row["results"].get(m)
            line.append(res["pct"] if res and res.get("status") == "ok" else None)
        pct.append(line)
    return labels, methods, pct


def _title(report):
    meta = report.get("meta", {})
    ceil = report["ceiling"]
    return (f"flashdecoding bench: {meta.get('device', '?')}, {report['dtype']}, "
            f"% of read-only HBM ceiling ({ceil['read_gbps']:.0f} GB/s)")


def write_png(report: dict, path: str, backend: str = "auto") -> str:
    """Write the plot to ``path``; returns the backend used ("matplotlib" or
    "builtin")."""
    if backend in ("auto", "matplotlib"):
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # noqa: F401
        except Exception:
            if backend == "matplotlib":
                raise
        else:
            _write_matplotlib(report, path)
            return "matplotlib"
    _write_builtin(report, path)
    return "builtin"


def _write_matplotlib(report, path):
    import matplotlib.pyplot as plt

    labels, methods, pct = plot_data(report)
    n, m = len(labels), max(1, len(methods))
    width = 0.8 / m
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * n + 3), 5.5), dpi=120)
    for j, name in enumerate(methods):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(n)]
        ys = [p[j] if p[j] is not None else 0.0 for p in pct]
        color = tuple(c / 255 for c in PALETTE[j % len(PALETTE)])
        ax.bar(xs, ys, width=width, label=name, color=color)
        for x, p in zip(xs, pct):
            if p[j] is None:
                ax.text(x, 1.0, "x", ha="center", va="bottom", fontsize=7, color=color)
    ax.axhline(100.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("% of read-only HBM ceiling")
    top = max([125.0] + [v + 20 for p in pct for v in p if v is not None])
    ax.set_ylim(0, top)
    ax.set_title(_title(report), fontsize=10)
    ax.legend(fontsize=8, ncol=min(m, 5), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_builtin(report, path):
    from ._bench_png import Canvas

    labels, methods, pct = plot_data(report)
    n, m = max(1, len(labels)), max(1, len(methods))
    s = 2                      # font scale
    line_h = 7 * s + 4
    left, right, top = 70, 20, 60
    plot_h = 360
    group_w = max(60, 14 * m + 20)
    plot_w = group_w * n
    key_rows = len(labels) + 1
    width = left + plot_w + right
    width = max(width, left + Canvas.text_width(_title(report), s) + right)
    height = top + plot_h + 40 + key_rows * line_h + 20
    c = Canvas(width, height)
    c.text(10, 10, _title(report), scale=s)
    # legend
    x = 10
    for j, name in enumerate(methods):
        color = PALETTE[j % len(PALETTE)]
        c.rect(x, 32, x + 12, 44, color)
        x = c.text(x + 16, 34, name, scale=s) + 16
    vmax = max([110.0] + [v + 5 for p in pct for v in p if v is not None])
    base = top + plot_h

    def ypix(v):
        return base - int(round(v / vmax * plot_h))

    for g in range(0, int(vmax) + 1, 20):
        y = ypix(g)
        c.hline(left, left + plot_w, y, (225, 225, 225))
        c.text(left - Canvas.text_width(f"{g}%", s) - 6, y - 5, f"{g}%", scale=s)
    c.hline(left, left + plot_w, ypix(100), (0, 0, 0), dash=6)
    c.vline(left, top, base + 1, (0, 0, 0))
    c.hline(left, left + plot_w, base, (0, 0, 0))
    bar_w = max(4, (group_w - 12) // m)
    for i, p in enumerate(pct):
        gx = left + i * group_w + 6
        for j, v in enumerate(p):
            color = PALETTE[j % len(PALETTE)]
            x0 = gx + j * bar_w
            if v is None:
                c.text(x0 + bar_w // 2 - 3, base - 12, "x", color=color, scale=s)
            else:
                c.rect(x0, ypix(v), x0 + bar_w - 1, base, color)
        num = str(i + 1)
        c.text(left + i * group_w + group_w // 2 - Canvas.text_width(num, s) // 2,
               base + 8, num, scale=s)
    y = base + 40
    c.text(10, y, "shapes (Hq/Hkv D B K_len); x = did not run", scale=s)
    for i, lab in enumerate(labels):
        y += line_h
        c.text(10, y, f"{i + 1}: {lab}", scale=s)
    with open(path, "wb") as f:
        f.write(c.to_png())
