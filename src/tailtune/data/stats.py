"""``tailtune data stats`` / ``data check``: a dataset's class-count profile, plot and start-up checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tailtune.config import Config, list_presets, load_config
from tailtune.data.holdout import HoldoutError
from tailtune.data.longtail import FEW_MAX, MANY_MIN
from tailtune.data.sources.base import SOURCES, LTData, build_data
from tailtune.data.validate import check_image_files
from tailtune.runtime.files import atomic, writing

SHOWN = 5  # head / tail classes listed


def data_config(source: str | None, overrides=(), files=()) -> Config:
    """A config for ``source``: a data preset (or YAML file) or a registered source name, plus overrides."""
    if source in SOURCES and source not in list_presets("data"):
        return load_config(None, None, files, [f"data.name={source}", *overrides])
    return load_config(None, source, files, overrides)


def profile(data: LTData) -> dict:
    """Class-count profile of the training split: sizes, imbalance, head and tail, groups."""
    counts = data.train_counts
    order = np.lexsort((np.arange(len(counts)), -counts))  # largest first, ties by label
    groups = np.asarray(data.groups)
    return {
        "num_classes": data.num_classes,
        "train_images": int(counts.sum()),
        "val_images": len(data.val) if data.val is not None else 0,
        "val_source": data.val_source or "none",
        "test_images": len(data.test),
        "max": int(counts.max()),
        "min": int(counts.min()),
        "median": float(np.median(counts)),
        "imbalance_ratio": float(counts.max() / max(int(counts.min()), 1)),
        "head": [(data.classnames[i], int(counts[i])) for i in order[:SHOWN]],
        "tail": [(data.classnames[i], int(counts[i])) for i in order[::-1][:SHOWN]],
        "groups": {name: {"classes": int((groups == g).sum()), "images": int(counts[groups == g].sum())}
                   for g, name in enumerate(data.group_names)},
        "sorted_counts": [int(c) for c in counts[order]],
    }


def format_profile(name: str, p: dict) -> str:
    """The profile as the lines ``tailtune data stats`` prints."""
    lines = [
        f"{name}: {p['num_classes']} classes, {p['train_images']:,} training images, "
        f"{p['val_images']:,} validation ({p['val_source']}), {p['test_images']:,} test",
        f"per class: max {p['max']}, median {p['median']:g}, min {p['min']}; imbalance ratio {p['imbalance_ratio']:.1f}",
        "groups: " + ", ".join(f"{g} {v['classes']} classes / {v['images']:,} images" for g, v in p["groups"].items()),
        "head: " + ", ".join(f"{n} ({c})" for n, c in p["head"]),
        "tail: " + ", ".join(f"{n} ({c})" for n, c in p["tail"]),
    ]
    return "\n".join(lines)


def plot_counts(sorted_counts, path: str | Path, title: str = "") -> Path:
    """Save a bar plot of the per-class training counts, sorted (log scale, group thresholds marked)."""
    # No pyplot: the caller's backend and figures stay as they are. Imported here: matplotlib is slow to
    # import, and only this plot needs it.
    from matplotlib.figure import Figure

    path = Path(path)
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    ax.bar(np.arange(len(sorted_counts)), sorted_counts, width=1.0, color="#4C72B0")
    ax.set_yscale("log")
    for y, label in ((MANY_MIN, f"many > {MANY_MIN}"), (FEW_MAX, f"few < {FEW_MAX}")):
        ax.axhline(y, color="#C44E52", lw=0.8, ls="--")
        ax.text(len(sorted_counts) - 1, y, label, ha="right", va="bottom", fontsize=8, color="#C44E52")
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel("training images")
    ax.set_title(title)
    fig.tight_layout()
    with atomic(path, suffix=path.suffix) as tmp:  # the suffix names the image format
        fig.savefig(tmp, dpi=120)
    return path


def dataset_stats(cfg: Config, plot: str | Path | None = None, check_files: bool = False) -> tuple[dict, Path | None]:
    """Build the data (lists only unless ``check_files``), return its profile and the plot's path.

    A hold-out that the data cannot give (a class too small for ``data.holdout_policy``) does not
    stop the description: the profile is of the data without it, and a note says why training
    would stop and what to set.
    """
    try:
        data = build_data(cfg.data, check_files=check_files)
    except HoldoutError as e:
        if e.described is None:
            raise
        data = e.described
        if check_files:
            data = check_image_files(data, cfg.data.verify_images, cfg.data.skip_corrupt)
        data.notes.insert(0, f"training with this config stops here: {e} The counts above are without that "
                             "hold-out.")
    p = profile(data)
    p["notes"] = list(data.notes)
    saved = plot_counts(p["sorted_counts"], plot, f"{cfg.data.name}: training images per class") if plot else None
    return p, saved
