"""The figures of run reports and comparisons (matplotlib ``Figure`` objects, PNG bytes).

Each function takes plain numbers (no run folders) and returns PNG bytes, so the figures
are testable on their own and the report decides where they go. Classes are always shown
sorted by training-image count, most first (ties by class index), the order in which the
long tail reads left to right.

The caller's matplotlib is left as it was: figures are ``matplotlib.figure.Figure`` objects
(no pyplot, so no backend is chosen or switched and no figure stays registered) and the
style below applies only while a figure is drawn and saved (``matplotlib.rc_context``).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np

from tailtune.data.longtail import count_order

# matplotlib is imported where a figure is drawn: it is slow to import, and only reports draw.

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
GROUP_COLOURS = ("#0072B2", "#E69F00", "#D55E00", "#009E73", "#CC79A7", "#56B4E9")
RUN_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
GREY = "#555555"
COUNT_COLOUR = "#6A3D9A"  # the training-count line: apart from the group and run colours
DPI = 110


STYLE = {"font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold",
         "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": DPI}


def figure(**kwargs):
    """A new figure of its own: drawn without pyplot, whatever the caller's backend."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def styled(draw):
    """Draw (and save) under :data:`STYLE`; the global rcParams are restored afterwards."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def share(percent: float | None) -> str:
    """A share in percent for a label: whole percents, one decimal under 10% (a 0.5% share is
    "0.5%", not "0%"), "<0.1%" for a share above 0 but under 0.1%; likewise ">99.9%" under 100%."""
    if percent is None:
        return "–"
    p = float(percent)
    if p == 0 or p == 100:
        return f"{p:.0f}%"
    if 0 < p < 0.1:
        return "<0.1%"
    if 99.9 < p < 100:
        return ">99.9%"
    if p < 9.95 or 99.5 <= p < 100:  # one decimal where a whole percent would hide the difference
        return f"{p:.1f}%"
    return f"{p:.0f}%"


def group_runs(sorted_groups: Sequence[int]) -> list[tuple[int, int, int]]:
    """(group, first position, last position) of each run of equal groups along the sorted classes."""
    runs: list[tuple[int, int, int]] = []
    for i, g in enumerate(sorted_groups):
        if runs and runs[-1][0] == g and runs[-1][2] == i - 1:
            runs[-1] = (g, runs[-1][1], i)
        else:
            runs.append((int(g), i, i))
    return runs


def _log_axis(ax) -> None:
    """Log scale with plain numbers (3, 10, 100) rather than powers (3x10^0)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    lo, hi = ax.get_ylim()
    # Under a decade there are no major ticks worth the name: label the minor ones instead.
    ax.yaxis.set_minor_formatter(plain if hi / max(lo, 1e-12) < 20 else NullFormatter())


def _classes(k: int) -> str:
    return f"{k} class" if k == 1 else f"{k} classes"


def _legend_below(ax, handles, n_classes: int) -> None:
    below = -0.32 if n_classes <= 40 else -0.16  # clear of rotated class names
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, below), ncol=4, fontsize=8, frameon=False)


def _colour(g: int) -> str:
    return GROUP_COLOURS[g % len(GROUP_COLOURS)]


def _bands(ax, sorted_groups, group_names, labels: dict[int, str] | None = None) -> None:
    """Shade each group's span of sorted classes and name it along the top of the axes."""
    for g, a, b in group_runs(sorted_groups):
        ax.axvspan(a - 0.5, b + 0.5, color=_colour(g), alpha=0.08, lw=0)
        if a > 0:
            ax.axvline(a - 0.5, color=GREY, lw=0.8, ls=":")
        text = (labels or {}).get(g, group_names[g])
        ax.text((a + b) / 2, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=9, color=_colour(g), fontweight="bold")


def _class_axis(ax, order, classnames, xlabel: str = "classes, sorted by training images (most → fewest)") -> None:
    n = len(order)
    ax.set_xlim(-0.5, n - 0.5)
    if n <= 40:  # few classes: name them; many: rank ticks only
        ax.set_xticks(range(n))
        ax.set_xticklabels([classnames[c] for c in order], rotation=60, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean over a centred window, ignoring NaN (classes without test images)."""
    if window <= 1:
        return values
    ok = ~np.isnan(values)
    kernel = np.ones(window)
    num = np.convolve(np.where(ok, values, 0.0), kernel, mode="same")
    den = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def smoothing_window(num_classes: int) -> int:
    """About 1/25 of the classes (odd), 1 (no smoothing) below 50 classes."""
    if num_classes < 50:
        return 1
    w = max(3, num_classes // 25)
    return w + 1 - w % 2


def _as_float(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


@styled
def per_class_accuracy(per_class, counts, groups, group_names, classnames, group_acc=None,
                       title: str = "Per-class test accuracy against training images") -> bytes:
    """Bars of per-class accuracy (coloured by group) over classes sorted by count, with the
    training count on a log-scale second axis and each group's accuracy as a dashed line."""
    from matplotlib.lines import Line2D

    order = count_order(counts)
    acc = _as_float(per_class)[order]
    cnt = np.asarray(counts)[order]
    grp = np.asarray(groups)[order]
    n = len(order)
    fig = figure(figsize=(10, 4.6))
    ax = fig.subplots()
    width = 0.8 if n <= 200 else 1.0
    ax.bar(np.arange(n), np.nan_to_num(acc), width=width, color=[_colour(g) for g in grp], alpha=0.85,
           label="per-class accuracy")
    labels = {}
    for g, a, b in group_runs(grp):
        value = (group_acc or {}).get(group_names[g])
        k = int((np.asarray(groups) == g).sum())
        labels[g] = f"{group_names[g]} · {_classes(k)}" + (f" · {value:.1f}%" if value is not None else "")
        if value is not None:
            ax.hlines(value, a - 0.5, b + 0.5, colors=_colour(g), linestyles="--", lw=1.6, zorder=2.5)
    _bands(ax, grp, group_names, labels)
    window = smoothing_window(n)
    if window > 1:
        ax.plot(np.arange(n), _moving_average(acc, window), color="black", lw=1.4,
                label=f"moving average ({window} classes)")
    ax.set_ylim(0, 110 if n <= 40 else 105)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, pad=22)
    _class_axis(ax, order, classnames)
    ax2 = ax.twinx()
    ax2.plot(np.arange(n), cnt, color=COUNT_COLOUR, lw=1.4, ls="--", marker="o" if n <= 60 else None, ms=3,
             label="training images (right axis)")
    _log_axis(ax2)
    if n <= 40:  # few classes: the values, so that a 0% class is seen, not missed
        # On the twin axes (drawn last) in the accuracy's coordinates, each on a white patch: the
        # group lines and the count line pass behind a label with a gap rather than through it.
        for i, a in enumerate(acc):
            ax2.text(i, (0 if np.isnan(a) else a) + 1.2, "no test images" if np.isnan(a) else f"{a:.0f}",
                     transform=ax.transData, ha="center", va="bottom", fontsize=8, zorder=5,
                     bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9})
    ax2.set_ylabel("training images (log scale)", color=COUNT_COLOUR)
    ax2.spines["right"].set_visible(True)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    handles.append(Line2D([], [], color=GREY, ls="--", lw=1.6, label="group accuracy"))
    _legend_below(ax, handles, n)
    return _png(fig)


@styled
def count_profile(counts, groups, group_names, classnames) -> bytes:
    """The training-image count of every class, sorted, on a log scale, groups shaded."""
    order = count_order(counts)
    cnt = np.asarray(counts)[order]
    grp = np.asarray(groups)[order]
    n = len(order)
    fig = figure(figsize=(10, 3.8))
    ax = fig.subplots()
    ax.bar(np.arange(n), cnt, width=0.8 if n <= 200 else 1.0, color=[_colour(g) for g in grp], alpha=0.9)
    _log_axis(ax)
    if n <= 40:
        for i, c in enumerate(cnt):
            ax.text(i, c * 1.03, f"{c:,}", ha="center", va="bottom", fontsize=8)
    labels = {g: f"{group_names[g]} · {_classes(int((np.asarray(groups) == g).sum()))}"
              for g, _, _ in group_runs(grp)}
    _bands(ax, grp, group_names, labels)
    ratio = cnt.max() / max(cnt.min(), 1)
    ax.set_title(f"Class-count profile: {int(cnt.sum()):,} training images, "
                 f"{cnt.max():,} → {cnt.min():,} per class (imbalance ratio {ratio:.0f})", pad=22)
    ax.set_ylabel("training images (log scale)")
    _class_axis(ax, order, classnames)
    return _png(fig)


@styled
def training_curves(curves: dict[str, tuple[list, list]], epoch_steps: Sequence[int] = ()) -> bytes:
    """Loss, learning rate and running training accuracy against the optimizer step.

    ``curves`` maps names (loss, epoch_loss, lr, running_acc, epoch_acc) to (steps, values);
    missing names leave their panel saying so.
    """
    fig = figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    panels = [
        ("Training loss", "loss", [("loss", "per step", "-", 0.5), ("epoch_loss", "epoch mean", "o-", 1.0)]),
        ("Learning rate", "learning rate (head)", [("lr", None, "-", 1.0)]),
        ("Training accuracy", "accuracy (%)", [("running_acc", "running, within epoch", "-", 0.7),
                                              ("epoch_acc", "epoch", "o-", 1.0)]),
    ]
    for ax, (title, ylabel, series) in zip(axes, panels):
        drawn = False
        for i, (key, label, style, alpha) in enumerate(series):
            if key in curves and len(curves[key][0]):
                steps, values = curves[key]
                ax.plot(steps, values, style, color=RUN_COLOURS[i], alpha=alpha, lw=1.5, ms=4, label=label)
                drawn = True
        for s in epoch_steps[:-1]:
            ax.axvline(s, color=GREY, lw=0.8, ls=":")
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color=GREY)
        elif any(label for _, label, _, _ in series if label):
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("optimizer step" + (" (dotted: epoch ends)" if len(epoch_steps) > 1 else ""))
        ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _png(fig)


@styled
def group_accuracy_bars(series: dict[str, dict[str, float | None]], categories: Sequence[str],
                        title: str, ylabel: str = "test accuracy (%)") -> bytes:
    """Grouped bars: one group of bars per category (overall, many, ...), one bar per series."""
    names = list(series)
    k = max(len(names), 1)
    width = 0.8 / k
    fig = figure(figsize=(max(6.0, 1.2 + len(categories) * (0.5 + 0.45 * k)), 4.0))
    ax = fig.subplots()
    x = np.arange(len(categories))
    for i, name in enumerate(names):
        vals = [series[name].get(c) for c in categories]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, [np.nan if v is None else v for v in vals], width=width * 0.95,
               color=RUN_COLOURS[i % len(RUN_COLOURS)], label=name)
        for p, v in zip(pos, vals):
            text = "–" if v is None else f"{v:.1f}"
            ax.text(p, (v or 0) + 1, text, ha="center", va="bottom", fontsize=8 if k < 5 else 6.5,
                    rotation=0 if k < 5 else 90)
    ax.set_xticks(x)
    ax.set_xticklabels(categories)
    ax.set_ylim(0, 112)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(k, 3), frameon=False)
    return _png(fig)


@styled
def confusion_bars(rows: Sequence[dict], group_names: Sequence[str], title: str) -> bytes:
    """Horizontal bars 'true → predicted' by count, coloured by the predicted class's group."""
    from matplotlib.patches import Rectangle

    fig = figure(figsize=(9, 0.9 + 0.38 * max(len(rows), 1)))
    ax = fig.subplots()
    if not rows:
        ax.text(0.5, 0.5, "no errors on the test images of this group", transform=ax.transAxes, ha="center")
        ax.set_axis_off()
        ax.set_title(title)
        return _png(fig)
    labels = [f"{r['true_name']} → {r['pred_name']}" for r in rows][::-1]
    counts = [r["count"] for r in rows][::-1]
    colours = [_colour(r["pred_group"]) for r in rows][::-1]
    y = np.arange(len(rows))
    ax.barh(y, counts, color=colours, alpha=0.9)
    for yi, r in zip(y, rows[::-1]):
        ax.text(r["count"], yi, f"  {r['count']} ({share(r['share'])} of its test images)", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlim(0, max(counts) * 1.45)
    ax.set_xlabel("test images (true class → predicted class)")
    ax.set_title(title)
    used = sorted({r["pred_group"] for r in rows})
    handles = [Rectangle((0, 0), 1, 1, color=_colour(g)) for g in used]
    # Beside the axes: inside, it covered the label of the longest bar.
    ax.legend(handles, [f"predicted class is {group_names[g]}" for g in used], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


@styled
def per_class_overlay(per_class_by_run: dict[str, Sequence], counts, groups, group_names, classnames) -> bytes:
    """Per-class accuracy of several runs over the same classes sorted by count (smoothed for
    many classes), the training count on a log-scale second axis."""
    order = count_order(counts)
    grp = np.asarray(groups)[order]
    n = len(order)
    window = smoothing_window(n)
    fig = figure(figsize=(10, 4.6))
    ax = fig.subplots()
    markers, styles = "osD^vP*X", ("-", "--", "-.", ":")
    for i, (name, per_class) in enumerate(per_class_by_run.items()):
        acc = _as_float(per_class)[order]
        # Distinct markers and dashes: runs with equal values stay visible on top of each other.
        ax.plot(np.arange(n), _moving_average(acc, window), color=RUN_COLOURS[i % len(RUN_COLOURS)], lw=1.8,
                ls=styles[i % len(styles)], marker=markers[i % len(markers)] if n <= 60 else None,
                ms=7 - i % 4, alpha=0.9, label=name)
    _bands(ax, grp, group_names)
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)" + (f", moving average over {window} classes" if window > 1 else ""))
    ax.set_title("Per-class accuracy of each run (classes sorted by training images)", pad=22)
    _class_axis(ax, order, classnames)
    ax2 = ax.twinx()
    ax2.plot(np.arange(n), np.asarray(counts)[order], color=COUNT_COLOUR, lw=1.2, ls="--",
             label="training images (right axis)")
    _log_axis(ax2)
    ax2.set_ylabel("training images (log scale)", color=COUNT_COLOUR)
    ax2.spines["right"].set_visible(True)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    _legend_below(ax, handles, n)
    return _png(fig)


def _reliability_points(curve: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence %, accuracy %, count) per bin; NaN where a bin is empty or not recorded.

    Confidence is a probability in metrics.json's ``reliability`` (0-1); a curve whose
    confidences exceed 1 is taken as already in percent.
    """
    curve = curve or {}
    conf = _as_float(curve.get("confidence") or [])
    acc = _as_float(curve.get("accuracy") or [])
    count = np.array([0 if c is None else int(c) for c in curve.get("count") or []], dtype=int)
    if conf.size and np.nanmax(np.append(conf, 0.0)) <= 1.0 + 1e-9:
        conf = 100.0 * conf
    return conf, acc, count


@styled
def reliability_diagrams(series: dict[str, dict], panels: Sequence[str], ece: dict[str, dict] | None = None,
                         title: str = "Reliability: accuracy against confidence") -> bytes:
    """Small multiples, one panel per group (``panels``: overall, many, medium, few), of the
    reliability diagram (equal-width bins of top-1 confidence; metrics.json's ``reliability``).

    ``series`` maps a run's name to its ``reliability`` dict. One run: bars of each bin's
    accuracy against the diagonal, the gap to the bin's mean confidence shaded, the bin's
    number of images as a grey strip along the bottom (the fullest bin 12 points high).
    Several runs: one line each.
    ``ece[name][panel]`` (percent), where given, is written in the panel.
    """
    from matplotlib.patches import Patch

    names = list(series)
    single = len(names) == 1
    fig = figure(figsize=(3.1 * len(panels) + 0.6, 3.7))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles: dict = {}
    for ax, panel in zip(axes, panels):
        ax.plot([0, 100], [0, 100], color=GREY, lw=1.0, ls=":", zorder=1)
        drawn = False
        for i, name in enumerate(names):
            rel = series[name] or {}
            bins = int(rel.get("bins") or len((rel.get("overall") or {}).get("count") or []) or 15)
            conf, acc, count = _reliability_points(rel.get(panel))
            if not count.size or count.sum() == 0:
                continue
            drawn = True
            width = 100.0 / bins
            centres = width * (np.arange(bins) + 0.5)[:len(acc)]
            colour = _colour(0) if single else RUN_COLOURS[i % len(RUN_COLOURS)]
            value = ((ece or {}).get(name) or {}).get(panel)
            if single:
                ax.bar(centres, np.nan_to_num(acc), width=width * 0.92, color=colour, alpha=0.85, zorder=2)
                gap = np.where(np.isnan(conf), 0.0, conf - np.nan_to_num(acc))
                ax.bar(centres, gap, bottom=np.nan_to_num(acc), width=width * 0.92, color=GROUP_COLOURS[2],
                       alpha=0.25, hatch="//", edgecolor=GROUP_COLOURS[2], lw=0, zorder=2)
                ax.bar(centres, 12.0 * count / count.max(), width=width * 0.92, color=GREY, alpha=0.45, zorder=3)
                if value is not None:
                    ax.text(0.04, 0.95, f"ECE {value:.2f}%", transform=ax.transAxes, ha="left", va="top",
                            fontsize=9, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85})
            else:
                ok = ~np.isnan(acc) & ~np.isnan(conf)
                line = ax.plot(conf[ok], acc[ok], color=colour, marker="osD^vP*X"[i % 8], ms=4, lw=1.5, zorder=3,
                               ls=("-", "--", "-.", ":")[i % 4], label=name)[0]
                handles.setdefault(name, line)
                if value is not None:  # stacked top left, in the run's colour
                    ax.text(0.04, 0.95 - 0.075 * i, f"ECE {value:.1f}", transform=ax.transAxes, ha="left",
                            va="top", fontsize=7.5, color=colour)
        if not drawn:
            ax.text(50, 50, "no test images", ha="center", va="center", color=GREY,
                    bbox={"facecolor": "white", "edgecolor": "none"})
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_aspect("equal")
        ax.set_title(f"{panel}-shot" if panel in ("many", "medium", "few") else panel)
        ax.set_xlabel("confidence (%)")
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("accuracy (%)")
    if single:
        handles = [Patch(color=_colour(0), alpha=0.85, label="accuracy of the bin"),
                   Patch(facecolor=GROUP_COLOURS[2], alpha=0.25, hatch="//", edgecolor=GROUP_COLOURS[2],
                         label="gap to the bin's mean confidence"),
                   Patch(color=GREY, alpha=0.45, label="images in the bin (bottom strip, fullest = 12)")]
    else:
        handles = list(handles.values())
    fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 4),
               fontsize=8, frameon=False)
    return _png(fig)
