"""A sweep's own part of its comparison report: accuracy against each swept key.

For each swept key, one figure with a panel per metric (overall, balanced, then each
group): the key's values along x in the order they were given, one line per combination of
the other keys' values, each point the mean over seeds with the standard deviation as an
error bar. A sweep with post-hoc axes (``posthoc=none,la``, ``posthoc.tau=0,1,auto``) adds a
table with one row per (point, method, tau).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tailtune.report.html import escape, html_table, pct
from tailtune.report.plots import RUN_COLOURS, _png, figure, styled
from tailtune.report.spread import mean_std


def axis_curves(axis, other_axes, points, rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """``{line label: {metric: [mean_std per value of axis]}}`` over the finished points.

    ``rows[i]`` is the comparison row (test metrics) of ``points[i]``; the line label names the
    other swept keys' values ("all" when only this key is swept).
    """
    cells: dict[str, dict[str, list[list[float | None]]]] = {}
    for point, row in zip(points, rows):
        label = ", ".join(f"{a.key}={point.values[a.key]}" for a in other_axes) or "all"
        line = cells.setdefault(label, {m: [[] for _ in axis.values] for m in metrics})
        x = axis.values.index(point.values[axis.key])
        for m in metrics:
            line[m][x].append(row.get(m))
    return {label: {m: [mean_std(vals) for vals in line[m]] for m in metrics} for label, line in cells.items()}


@styled
def axis_figure(key: str, values: Sequence[str], curves: dict, metrics: Sequence[str]) -> bytes:
    """One panel per metric: accuracy (mean ± std over seeds) against the values of ``key``."""
    fig = figure(figsize=(3.2 * len(metrics) + 0.6, 3.4))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    x = np.arange(len(values))
    slanted = max(len(v) for v in values) > 5
    handles = []
    for ax, metric in zip(axes[0], metrics):
        empty = True
        for i, (label, line) in enumerate(curves.items()):
            mean = [np.nan if s["mean"] is None else s["mean"] for s in line[metric]]
            std = [0.0 if s["std"] is None else s["std"] for s in line[metric]]
            empty &= all(np.isnan(mean))
            h = ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, color=RUN_COLOURS[i % len(RUN_COLOURS)],
                            label=label)
            if ax is axes[0][0]:
                handles.append(h)
        if empty:
            ax.text(0.5, 0.5, "no classes", transform=ax.transAxes, ha="center", va="center", color="#888888")
        ax.set_xlim(-0.5, len(values) - 0.5)
        ax.set_xticks(x)
        ax.set_xticklabels(values, rotation=30 if slanted else 0, ha="right" if slanted else "center")
        ax.set_title(f"{metric}-shot" if metric in ("many", "medium", "few") else metric)
        ax.set_xlabel(key)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.tight_layout()
    if len(curves) > 1:  # below the panels, in figure coordinates: the panels keep their width
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(curves), 4),
                   fontsize=8, frameon=False)
    return _png(fig)


def tau_cell(row: dict) -> str:
    """A post-hoc row's tau as shown: "–" without adjustment, "auto → 0.7" where chosen on val."""
    if row.get("tau") is None:
        return "–"
    return f"auto → {row['tau']:g}" if row.get("tau_from") == "val" else f"{row['tau']:g}"


def posthoc_section(sweep, page, rows: Sequence[dict], groups: Sequence[str]) -> None:
    """The table of a sweep's post-hoc rows: the point's axis values, method, tau, test numbers."""
    keys = [a.key for a in sweep.axes]
    metrics = ["overall", "balanced", *groups, "top5", "ece", "nll"]
    header = [*keys, "posthoc", "tau", "overall", "balanced", *groups, "top-5", "ECE", "NLL"]
    body = [[*[row.get(k, "–") for k in keys], row["posthoc"], tau_cell(row),
             *[("–" if row.get(m) is None else f"{row[m]:.4f}") if m == "nll" else pct(row.get(m)) for m in metrics]]
            for row in rows]
    adjusted = [m for m in sweep.posthoc.methods if m != "none"]
    evaluated = {(r["point"], r["posthoc"]) for r in rows}
    missing = sorted({p for p in {r["point"] for r in rows} for m in adjusted if (p, m) not in evaluated})
    note = (f'<p class="note">Not adjusted yet (or failed): {escape(", ".join(missing))}.</p>' if missing else "")
    page.section("posthoc", "Post-hoc adjustment",
                 html_table(header, body, set(range(len(keys) + 2, len(header)))) + note,
                 "Each point's run adjusted on its test logits, no retraining: none is the run as trained, la "
                 "subtracts tau log(training prior) from the logits, taunorm rescales the linear head's class "
                 "vectors to w / ||w||^tau; tau auto is chosen on the validation split (best balanced accuracy), "
                 "never the test set. Accuracies and ECE in %, NLL in nats/image.")


def sweep_sections(sweep, points, page, rows: Sequence[dict], groups: Sequence[str],
                   posthoc: Sequence[dict] | None = None) -> dict:
    """Add one section per swept key to a comparison page (and the post-hoc table of ``posthoc``
    rows); returns the curves (and the post-hoc rows) for comparison.json."""
    metrics = ["overall", "balanced", *groups]
    out = {}
    grid = sweep.grid_axes
    for i, axis in enumerate(grid):
        others = [a for a in grid if a is not axis]
        curves = axis_curves(axis, others, points, rows, metrics)
        png = axis_figure(axis.key, axis.values, curves, metrics)
        spread = " (mean ± std over seeds)" if sweep.has_seeds else ""
        lead = (f"Test accuracy{spread} against {axis.key}, in the order the values were given"
                + (f"; one line per value of {', '.join(a.key for a in others)}." if others else "."))
        page.section(f"sweep-{i}", f"Accuracy against {axis.key}",
                     page.figure(f"sweep_{i}", png, f"accuracy against {axis.key}"), lead)
        out[axis.key] = {"values": list(axis.values), "curves": curves}
    extra = {}
    if posthoc is not None:
        posthoc_section(sweep, page, posthoc, groups)
        extra = {"posthoc": {"methods": list(sweep.posthoc.methods), "taus": list(sweep.posthoc.taus),
                             "rows": list(posthoc)}}
    return {"sweep": {"base": sweep.base, "fixed": sweep.fixed, "axes": out,
                      "points": [{"run": p.name, **p.values} for p in points], **extra}}
