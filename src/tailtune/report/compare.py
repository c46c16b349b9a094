"""Several finished runs side by side: one HTML page (``report.html``) plus ``comparison.json``.

The page is built from the blocks of :mod:`tailtune.report.html`; sweeps add their own
sections through ``compare_runs``' ``extra``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from tailtune.errors import ConfigError
from tailtune.report import plots
from tailtune.report.html import (
    BEYOND_LEAD,
    Page,
    beyond_top1_columns,
    beyond_top1_table,
    escape,
    html_table,
    minutes,
    pct,
    signed,
)
from tailtune.report.record import RunRecord, balanced, beyond_top1, config_value, read_run
from tailtune.report.spread import aggregate, format_mean_std
from tailtune.runtime.files import write_text, writing
from tailtune.runtime.rundir import COMPARISON

# Config keys that name or place a run rather than change what it computes.
_RUN_ONLY = ("name", "output_dir", "overwrite", "quiet")
# The data keys that decide which images are tested (the others shape training: imb_ratio,
# subset_seed of a benchmark's subsampling, val, workers, verify_images, store, interpolation).
_TEST_SET_KEYS = ("name", "root", "splits_dir", "path_map", "classnames_file", "holdout_per_class")
# Own data without a test split holds test images out, drawn with data.subset_seed.
_HELD_OUT_TEST_SOURCES = ("folder", "csv")
_log = logging.getLogger(__name__)


def test_set_identity(r: RunRecord) -> dict:
    """What identifies the test set a run was measured on: the data keys that choose its images,
    the class names, the number of test images and a hash of their labels (predictions.npz)."""
    keys = [*_TEST_SET_KEYS, *(["subset_seed"] if config_value(r.config, "data.name") in _HELD_OUT_TEST_SOURCES
                               else [])]
    ident = {f"data.{k}": config_value(r.config, f"data.{k}", None) for k in keys}
    ident["classes"] = hashlib.sha256(json.dumps(r.classnames).encode()).hexdigest()[:12]
    ident["test images"] = r.data.get("test_images")
    if r.labels is not None:
        ident["test labels"] = hashlib.sha256(np.ascontiguousarray(r.labels, dtype=np.int64).tobytes()).hexdigest()[:12]
    return ident


def _same_test_set(a: dict, b: dict) -> bool:
    """Same identity; a run without predictions.npz (no label hash) matches on the rest."""
    return all(a.get(k) == b.get(k) for k in set(a) | set(b)
               if not (k == "test labels" and (a.get(k) is None or b.get(k) is None)))


def test_set_groups(records: list[RunRecord]) -> tuple[list[int], dict[str, list]]:
    """A test-set number per run (0, 1, ... in order of appearance) and what differs between the
    runs' test sets ({what: value per run}; empty when every run was tested on the same set)."""
    idents = [test_set_identity(r) for r in records]
    firsts: list[dict] = []  # the identity of each test set's first run
    group = []
    for ident in idents:
        g = next((j for j, first in enumerate(firsts) if _same_test_set(first, ident)), None)
        if g is None:
            firsts.append(ident)
            g = len(firsts) - 1
        group.append(g)
    if len(firsts) == 1:
        return group, {}
    keys = [k for k in dict.fromkeys(k for i in idents for k in i)
            if len({json.dumps(i.get(k), default=str) for i in idents}) > 1]
    return group, {k: [i.get(k, "–") for i in idents] for k in keys}


def different_test_sets_warning(labels: list[str], test_set: list[int], diffs: dict[str, list]) -> str | None:
    """The warning of a comparison whose runs were measured on different test sets (None if not)."""
    if len(set(test_set)) < 2:
        return None
    sets = "; ".join(f"{chr(ord('A') + g)}: {', '.join(lab for lab, t in zip(labels, test_set) if t == g)}"
                     for g in sorted(set(test_set)))
    what = ", ".join(diffs) or "the test images"
    return (f"these runs were tested on {len(set(test_set))} different test sets ({sets}; they differ in {what}): "
            "their accuracies are not comparable, and no value is marked best across test sets.")


def _flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for k, v in node.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(configs: list[dict]) -> dict[str, list]:
    """Config keys whose values differ between runs (run-naming keys left out), sorted."""
    flat = [_flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: [f.get(k, "–") for f in flat] for k in keys
            if k not in _RUN_ONLY and len({json.dumps(f.get(k, "–"), sort_keys=True, default=str) for f in flat}) > 1}


def _labels(records: list[RunRecord]) -> list[str]:
    """Folder names, or parent/name where two runs share a folder name."""
    names = [r.name for r in records]
    return [f"{r.path.parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in records]


def comparison_rows(records: list[RunRecord], labels: list[str]) -> tuple[list[str], list[dict]]:
    """The group names (union, in order of appearance) and one summary row per run."""
    groups: list[str] = []
    for r in records:
        groups += [g for g in r.group_names if g not in groups]
    rows = []
    for label, r in zip(labels, records):
        t, p = r.metrics["test"], r.metrics.get("params", {})
        no_tte = r.metrics.get("test_no_tte") or (t if t["tte"] == "none" else None)
        rows.append({"run": label, "path": str(r.path), "dataset": r.metrics.get("dataset"),
                     "backbone": r.metrics.get("backbone", {}).get("name"), "peft": r.metrics.get("peft"),
                     "loss": config_value(r.config, "loss.name"), "tte": t["tte"], "overall": t["overall"],
                     "balanced": balanced(t), **{g: t.get(g) for g in groups}, "overall_no_tte": no_tte["overall"] if no_tte else None,
                     "macro_f1": t.get("macro_f1"), "trainable_params": p.get("trainable_total"),
                     "trainable_backbone_share": p.get("trainable_backbone_share"),
                     "train_s": r.metrics.get("time", {}).get("train_s"), **_gap_columns(r, groups),
                     **beyond_top1(t, groups)})
    return groups, rows


def best_cells(rows: list[dict], test_set: list[int], columns: list[str], first: int,
               lower: set[str] = frozenset()) -> dict:
    """``{(row, first + j): is best}`` for ``columns[j]``: the highest value (the lowest for a column
    in ``lower``) among the runs of the same test set, and only where that set has two runs or more."""
    best = {}
    for j, col in enumerate(columns):
        for g in set(test_set):
            members = [i for i, t in enumerate(test_set) if t == g]
            vals = {i: rows[i][col] for i in members if rows[i].get(col) is not None}
            top = (min if col in lower else max)(vals.values(), default=None)
            for i, v in vals.items():
                best[(i, first + j)] = len(members) > 1 and v == top
    return best


def _gap_columns(r: RunRecord, groups: list[str]) -> dict:
    """``train_<g>`` and ``gap_<g>`` (train - test, mean per-class accuracy) for overall and each group."""
    gap = r.metrics.get("generalisation_gap") or {}
    out = {}
    for g in ["overall", *groups]:
        out[f"train_{g}"] = gap.get("train", {}).get(g)
        out[f"gap_{g}"] = gap.get("gap", {}).get(g)
    return out


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path | None = None,
                 settings: list[str] | None = None, extra=None, title: str | None = None) -> Path:
    """Write a side-by-side report of several finished runs into ``out_dir``; returns the page.

    ``settings[i]`` names the setting run i belongs to: runs that share one differ only in
    their seed, and a section (and ``comparison.json``'s "settings") gives each setting's mean
    and standard deviation. ``extra(page, rows, groups)`` may add sections (sweeps add their
    plots) and returns more keys for ``comparison.json``.
    """
    if len(run_dirs) < 2:
        raise ConfigError(f"compare needs at least two run folders, got {len(run_dirs)}.")
    records = [read_run(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else Path(f"compare_{time.strftime('%Y%m%d-%H%M%S')}")
    if out.resolve() in [r.path.resolve() for r in records]:
        raise ConfigError(f"the comparison folder {out} is one of the runs; choose another (--out DIR).")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    labels = _labels(records)
    groups, rows = comparison_rows(records, labels)
    test_set, test_diffs = test_set_groups(records)
    for row, g in zip(rows, test_set):
        row["test_set"] = g
    page = Page(out, title or f"tailtune comparison of {len(records)} runs",
                 " · ".join(sorted({str(r['dataset']) for r in rows})))
    warning = different_test_sets_warning(labels, test_set, test_diffs)
    if warning:
        _log.warning(f"warning: {warning}")
        page.section("test-sets", "Warning: different test sets",
                     f'<p class="note"><b>{escape(warning)}</b></p>'
                     + html_table(["what", *labels], [[k, *[json.dumps(v, default=str) for v in vals]]
                                                      for k, vals in test_diffs.items()]
                                  + [["test set", *[chr(ord("A") + g) for g in test_set]]]))

    metric_cols = ["overall", "balanced", *groups, "overall_no_tte", "macro_f1"]
    gap_cols = [f"gap_{g}" for g in ["overall", *groups]]
    header = ["run", "PEFT", "loss", "TTE", "overall", "balanced", *groups, "overall, no TTE", "macro-F1",
              *[f"gap: {g}" for g in ["overall", *groups]], "trainable params", "train time"]
    best = best_cells(rows, test_set, metric_cols, 4)
    table_rows = [[row["run"], row["peft"], row["loss"], row["tte"], *[pct(row[c]) for c in metric_cols],
                   *[signed(row[c]) for c in gap_cols],
                   "–" if row["trainable_params"] is None else
                   f"{row['trainable_params']:,} ({100 * (row['trainable_backbone_share'] or 0):.2f}%)",
                   minutes(row["train_s"])] for row in rows]
    numeric = set(range(4, len(header)))
    beyond_cols = beyond_top1_columns(rows, groups)
    beyond_keys = [k for _, _, _, keys in beyond_cols for k in keys]
    beyond = beyond_top1_table(["run"], [[row["run"]] for row in rows], rows, groups,
                               bold=best_cells(rows, test_set, beyond_keys, 1,
                                               lower={k for key, _, low, keys in beyond_cols if low for k in keys}))
    if beyond:
        beyond = f'<p class="lead">{escape(BEYOND_LEAD)} Bold: the best of each column, as above.</p>' + beyond
    page.section("results", "Results side by side",
                 html_table(header, table_rows, numeric, bold=best) + beyond,
                 ("Test accuracy (%); the best value of each column is bold. " if not warning else
                  "Test accuracy (%); the runs were tested on different test sets (see the warning above): a value "
                  "is bold only where it is the best of the runs on the same test set. ")
                 + "Overall: over the test images; "
                 "balanced and the groups: means of per-class accuracies. Gap: mean per-class accuracy on "
                 "training images minus on test images (one view each; larger means more fitted to the training "
                 "images). Trainable parameters include the classifier; the percentage is the tuned share of the "
                 "backbone.")
    summary: dict = {"groups": groups, "runs": rows,
                     "test_sets": {"same": not warning, "differences": test_diffs, "warning": warning}}
    if settings is not None:
        summary["settings"] = _spread_section(page, rows, settings, [*metric_cols, *gap_cols, *beyond_keys], groups)

    series = {row["run"]: {c: row[c] for c in ["overall", *groups]} for row in rows}
    png = plots.group_accuracy_bars(series, ["overall", *groups], "Test accuracy overall and per group")
    page.section("groups", "Accuracy per group", page.figure("group_accuracy", png, "accuracy per group"))

    ref = records[0]
    same = [(label, r) for label, r in zip(labels, records) if r.classnames == ref.classnames]
    skipped = [label for label, r in zip(labels, records) if r.classnames != ref.classnames]
    png = plots.per_class_overlay({label: r.metrics["test"]["per_class"] for label, r in same}, ref.counts,
                                  ref.groups, ref.group_names, ref.classnames)
    note = (f'<p class="note">Left out (other classes than {labels[0]}): {escape(", ".join(skipped))}.</p>'
            if skipped else "")
    page.section("per-class", "Per-class accuracy", page.figure("per_class_overlay", png, "per-class accuracy")
                 + note, f"Classes sorted by the training-image count of {labels[0]}.")
    _reliability_section(page, records, labels, groups)

    diffs = config_differences([r.config for r in records])
    body = (html_table(["config key", *labels], [[k, *[json.dumps(v, default=str) for v in vals]]
                                                  for k, vals in diffs.items()])
            if diffs else "<p>The runs have the same configuration.</p>")
    page.section("differences", "What differs between the runs", body)
    page.section("runs", "Run folders", html_table(["run", "folder"], [[row["run"], row["path"]] for row in rows]))
    if extra is not None:
        summary.update(extra(page, rows, groups))
    write_text(out / COMPARISON, json.dumps(summary, indent=2))
    return page.write()


def _reliability_section(page: Page, records: list[RunRecord], labels: list[str], groups: list[str]) -> None:
    """Reliability diagrams of the runs that recorded them, one line per run, a panel per group."""
    with_rel = [(label, r.metrics["test"]) for label, r in zip(labels, records) if r.metrics["test"].get("reliability")]
    if not with_rel:
        return
    series = {label: t["reliability"] for label, t in with_rel}
    ece = {label: {"overall": t.get("ece"), **{g: ((t.get("group_calibration") or {}).get(g) or {}).get("ece")
                                               for g in groups}} for label, t in with_rel}
    png = plots.reliability_diagrams(series, ["overall", *groups], ece)
    left_out = [label for label, r in zip(labels, records) if not r.metrics["test"].get("reliability")]
    note = (f'<p class="note">Left out (no reliability recorded: runs from before tailtune measured it): '
            f"{escape(', '.join(left_out))}.</p>" if left_out else "")
    page.section("calibration", "Reliability", page.figure("reliability", png, "reliability diagrams") + note,
                 "Each run's test images binned by their top-1 confidence (15 equal-width bins): the bin's accuracy "
                 "against its mean confidence, overall and per group; the diagonal is perfect calibration, a line "
                 "below it over-confidence. ECE (%) in each panel.")


def _spread_section(page: Page, rows: list[dict], settings: list[str], columns: list[str],
                    groups: list[str]) -> list[dict]:
    """Mean ± standard deviation over the seeds of each setting; returns the numbers."""
    if len(settings) != len(rows):
        raise ConfigError(f"{len(settings)} settings given for {len(rows)} runs; give one per run.")
    stats = aggregate(rows, settings, columns)
    shown = ["overall", "balanced", *groups, "overall_no_tte", "gap_overall", *[f"gap_{g}" for g in groups]]
    header = ["setting", "runs", "overall", "balanced", *groups, "overall, no TTE", "gap: overall",
              *[f"gap: {g}" for g in groups]]
    body = [[s["setting"], s["n"], *[format_mean_std(s[c]) for c in shown]] for s in stats]
    page.section("spread", "Mean and spread over seeds", html_table(header, body, set(range(1, len(header)))),
                 "Each setting's runs differ only in train.seed: mean ± sample standard deviation (ddof 1) "
                 "of the test accuracy (%) and of the train − test gap.")
    return stats
