"""Reports: one run, or several side by side, as a self-contained HTML page plus PNGs.

A run report reads only the run folder: ``metrics.json`` (data summary, test metrics with
and without the test-time ensemble, parameters, times), ``predictions.npz`` (test labels
and predictions, for the confusions), the TensorBoard scalars in ``tb/`` (training curves)
and ``config.yaml``. Figures are written as PNGs into ``report/`` and embedded in
``report.html`` as base64, so the page opens anywhere on its own.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from tailtune.data.longtail import class_groups, count_order
from tailtune.errors import ConfigError, DataError
from tailtune.report import plots

PREDICTIONS = "predictions.npz"
REPORT = "report.html"
FIGURES = "report"
TOP_CONFUSIONS = 12
# Config keys that name or place a run rather than change what it computes.
_RUN_ONLY = ("name", "output_dir", "overwrite", "quiet")


# ---------------------------------------------------------------- predictions file


def save_predictions(path: str | Path, labels: np.ndarray, preds_by_tte: dict[str, np.ndarray]) -> None:
    """Test labels and predicted classes per test-time-ensemble mode (npz, no pickles)."""
    path = Path(path)
    arrays = {"labels": np.asarray(labels, dtype=np.int64)}
    for tte, preds in preds_by_tte.items():
        preds = np.asarray(preds, dtype=np.int64)
        if preds.shape != arrays["labels"].shape:
            raise ValueError(f"predictions for tte={tte} have shape {preds.shape}, labels {arrays['labels'].shape}")
        arrays[f"pred_{tte}"] = preds
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_predictions(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels, {tte: predicted classes}) as written by :func:`save_predictions`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable predictions file ({e}); re-run the evaluation.") from None
    if "labels" not in arrays:
        raise DataError(f"{path} has no 'labels' array; it was not written by tailtune.")
    return arrays.pop("labels"), {k[len("pred_"):]: v for k, v in arrays.items() if k.startswith("pred_")}


# ---------------------------------------------------------------- reading a run


@dataclass
class RunRecord:
    """What a report needs from one run folder."""

    path: Path
    metrics: dict
    config: dict
    labels: np.ndarray | None = None
    preds: dict[str, np.ndarray] = field(default_factory=dict)
    curves: dict[str, tuple[list, list]] = field(default_factory=dict)
    epoch_steps: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def data(self) -> dict:
        return self.metrics["data"]

    @property
    def group_names(self) -> list[str]:
        return list(self.data["group_names"])

    @property
    def classnames(self) -> list[str]:
        return list(self.data["classnames"])

    @property
    def counts(self) -> np.ndarray:
        return np.asarray(self.data["train_counts"])

    @property
    def groups(self) -> np.ndarray:
        return class_groups(self.data)

    def evaluations(self) -> list[tuple[str, dict]]:
        """(label, test metrics) for the run's test-time ensemble and, if measured, without it."""
        test = self.metrics["test"]
        rows = [(f"with TTE ({test['tte']})" if test["tte"] != "none" else "no TTE", test)]
        if self.metrics.get("test_no_tte"):
            rows.append(("without TTE", self.metrics["test_no_tte"]))
        return rows


def read_curves(tb_dir: Path) -> tuple[dict[str, tuple[list, list]], list[int]]:
    """Training curves from a run's TensorBoard scalars (the last value wins per step)."""
    if not tb_dir.is_dir() or not any(tb_dir.glob("events.out.tfevents.*")):
        return {}, []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    names = {"train/loss": "loss", "train/lr": "lr", "train/running_acc": "running_acc",
             "epoch/loss": "epoch_loss", "epoch/train_acc": "epoch_acc"}
    curves = {}
    for tag, key in names.items():
        if tag in tags:
            by_step = {e.step: e.value for e in acc.Scalars(tag)}
            steps = sorted(by_step)
            curves[key] = (steps, [by_step[s] for s in steps])
    epoch_steps = curves.get("epoch_loss", ([], []))[0]
    return curves, list(epoch_steps)


def _history_curves(history: list[dict]) -> tuple[dict, list[int]]:
    """Per-epoch curves from metrics.json when the run has no TensorBoard scalars."""
    if not history:
        return {}, []
    epochs = list(range(1, len(history) + 1))
    return ({"epoch_loss": (epochs, [h["loss"] for h in history]),
             "epoch_acc": (epochs, [h["accuracy"] for h in history]),
             "lr": (epochs, [h["lr"] for h in history])}, epochs)


def read_run(run_dir: str | Path) -> RunRecord:
    """Load a finished run folder for reporting."""
    path = Path(run_dir)
    metrics_path = path / "metrics.json"
    if not metrics_path.exists():
        what = "an unfinished run" if (path / "config.yaml").exists() else "not a tailtune run folder"
        raise ConfigError(f"{path} has no metrics.json ({what}); report and compare need finished runs.")
    metrics = json.loads(metrics_path.read_text())
    cfg_path = path / "config.yaml"
    config = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    record = RunRecord(path, metrics, config or {})
    if (path / PREDICTIONS).exists():
        record.labels, record.preds = load_predictions(path / PREDICTIONS)
    record.curves, record.epoch_steps = read_curves(path / "tb")
    if not record.curves:
        record.curves, record.epoch_steps = _history_curves(metrics.get("history", []))
    return record


# ---------------------------------------------------------------- confusions


def tail_confusions(labels, preds, groups, group: int, classnames, top: int = TOP_CONFUSIONS) -> list[dict]:
    """The most frequent errors on test images whose true class is in ``group``.

    One row per (true, predicted) pair with its count and its share (%) of the true class's
    test images; most frequent first, ties by true then predicted class index.
    """
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    groups = np.asarray(groups)
    support = np.bincount(labels, minlength=len(classnames))
    wrong = (labels != preds) & (groups[labels] == group)
    pairs = Counter(zip(labels[wrong].tolist(), preds[wrong].tolist()))
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1]))[:top]
    return [{"true": t, "pred": p, "true_name": classnames[t], "pred_name": classnames[p],
             "true_group": int(groups[t]), "pred_group": int(groups[p]), "count": n,
             "share": 100.0 * n / support[t]} for (t, p), n in ranked]


def error_destinations(labels, preds, groups, group: int, num_groups: int) -> tuple[int, list[int]]:
    """Errors on ``group``'s test images, and how many of them went to each group."""
    labels, preds, groups = np.asarray(labels), np.asarray(preds), np.asarray(groups)
    wrong = (labels != preds) & (groups[labels] == group)
    return int(wrong.sum()), [int((groups[preds[wrong]] == g).sum()) for g in range(num_groups)]


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f4f5f7;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
header{background:#1d2330;color:#fff;padding:22px 28px}header h1{margin:0 0 4px;font-size:1.6em}
header p{margin:0;color:#c9cede}
nav{max-width:1180px;margin:0 auto;padding:10px 28px 0;font-size:.92em}nav a{margin-right:16px;color:#0b5cad}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:18px 22px;margin:18px 0;
overflow-x:auto}
h2{margin:0 0 10px;font-size:1.25em}p.lead{margin:0 0 12px;color:#4a5163}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.93em}
th,td{padding:5px 11px;border-bottom:1px solid #e3e6ec;text-align:left}th{background:#f0f2f6}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}tr.best td.num{font-weight:600}
td b{color:#0b5cad}img{max-width:100%;height:auto;display:block;margin:6px 0}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:.85em;border-radius:6px}
.facts td:first-child{color:#4a5163}.note{color:#8a5a00}details summary{cursor:pointer;color:#0b5cad}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _balanced(t: dict):
    """Mean per-class accuracy of a test evaluation (``mean_class`` in runs from before ``balanced``)."""
    return t.get("balanced", t.get("mean_class"))


def _pct(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _table(header: list[str] | None, rows: list[list], numeric: set[int] = frozenset(), bold: dict | None = None,
           cls: str = "") -> str:
    """An HTML table (no header row if ``header`` is None); ``bold[(row, col)]`` marks best values;
    cells are escaped."""
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(header or []))
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, c in enumerate(row):
            text = f"<b>{_e(c)}</b>" if bold and bold.get((r, i)) else _e(c)
            cells.append(f'<td class="num">{text}</td>' if i in numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>{thead}<tbody>{''.join(body)}</tbody></table>"


class _Page:
    """Collects sections and figures; writes PNGs and the self-contained HTML page."""

    def __init__(self, out_dir: Path, title: str, subtitle: str):
        self.out_dir = out_dir
        self.title = title
        self.subtitle = subtitle
        self.sections: list[tuple[str, str, str]] = []
        self.figures: dict[str, bytes] = {}

    def figure(self, name: str, png: bytes, alt: str) -> str:
        self.figures[name] = png
        return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{_e(alt)}">'

    def section(self, sid: str, title: str, body: str, lead: str = "") -> None:
        lead_html = f'<p class="lead">{_e(lead)}</p>' if lead else ""
        self.sections.append((sid, title, f'<section id="{sid}"><h2>{_e(title)}</h2>{lead_html}{body}</section>'))

    def write(self) -> Path:
        fig_dir = self.out_dir / FIGURES
        fig_dir.mkdir(parents=True, exist_ok=True)
        for name, png in self.figures.items():
            (fig_dir / f"{name}.png").write_bytes(png)
        nav = "".join(f'<a href="#{sid}">{_e(t)}</a>' for sid, t, _ in self.sections)
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{_e(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<header><h1>{_e(self.title)}</h1><p>{_e(self.subtitle)}</p></header>"
                f"<nav>{nav}</nav><main>{''.join(s for _, _, s in self.sections)}"
                f'<p class="lead">Written by tailtune on {_e(time.strftime("%Y-%m-%d %H:%M"))}.</p></main>'
                f"</body></html>\n")
        path = self.out_dir / REPORT
        tmp = path.with_name(REPORT + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
        return path


def _group_label(name: str) -> str:
    return f"{name}-shot" if name in ("many", "medium", "few") else name


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _cfg(config: dict, dotted: str, default="–"):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _results_section(page: _Page, r: RunRecord) -> None:
    groups = r.group_names
    header = ["evaluation", "views / image", "overall", "balanced", *groups, "macro-F1", "worst class"]
    rows = []
    for label, t in r.evaluations():
        rows.append([label, t.get("views_per_image", "–"), _pct(t["overall"]), _pct(_balanced(t)),
                     *[_pct(t.get(g)) for g in groups], _pct(t.get("macro_f1")), _pct(t.get("worst_class"))])
    table = _table(header, rows, numeric=set(range(1, len(header))))
    series = {label: {"overall": t["overall"], **{g: t.get(g) for g in groups}} for label, t in r.evaluations()}
    png = plots.group_accuracy_bars(series, ["overall", *groups],
                                    f"Test accuracy overall and per group ({r.metrics.get('dataset', '')})")
    d, p, tm = r.data, r.metrics.get("params", {}), r.metrics.get("time", {})
    facts = [
        ["data", f"{r.metrics.get('dataset', '–')}: {d['num_classes']} classes, {d['train_images']:,} training / "
                 f"{d['test_images']:,} test images, imbalance ratio {d['imbalance_ratio']:.0f}"],
        ["groups", ", ".join(f"{g} {k} classes" for g, k in zip(groups, d["classes_per_group"]))],
        ["backbone", " ".join(str(v) for v in r.metrics.get("backbone", {}).values())],
        ["fine-tuning", f"{r.metrics.get('peft', '–')}: {p.get('trainable_backbone', 0):,} trainable backbone "
                        f"parameters ({100 * p.get('trainable_backbone_share', 0):.3f}% of "
                        f"{p.get('backbone_total', 0):,})"],
        ["classifier", f"{_cfg(r.config, 'head.type')} head, {p.get('trainable_head', 0):,} parameters, "
                       f"initialised by {r.metrics.get('head_init', '–')}"],
        ["training", f"loss {_cfg(r.config, 'loss.name')}, {_cfg(r.config, 'train.epochs')} epochs, "
                     f"batch {_cfg(r.config, 'train.batch_size')}, lr {_cfg(r.config, 'train.lr')}"],
        ["time", f"training {_minutes(tm.get('train_s'))}, evaluation {_minutes(tm.get('eval_s'))}, "
                 f"total {_minutes(tm.get('total_s'))}"],
    ]
    notes = "".join(f'<p class="note">note: {_e(n)}</p>' for n in r.metrics.get("notes", []))
    page.section("results", "Results", table + page.figure("metrics", png, "accuracy per group") +
                 _table(None, facts, cls="facts") + notes,
                 "Test accuracy (%): overall over the test images; balanced (the mean per-class accuracy) "
                 "and each group of classes by training-image count as means of their classes' accuracies.")


def _gap_section(page: _Page, r: RunRecord) -> None:
    """Train against test accuracy per group (runs that measured it: eval.gap_per_class > 0)."""
    gap = r.metrics.get("generalisation_gap")
    if not gap:
        return
    cols = ["overall", *r.group_names]
    rows = [["train", *[_pct(gap["train"].get(c)) for c in cols]],
            ["test", *[_pct(gap["test"].get(c)) for c in cols]],
            ["gap (train − test)", *[_signed(gap["gap"].get(c)) for c in cols]],
            ["classes", *[gap["classes"].get(c, "–") for c in cols]]]
    table = _table(["", *cols], rows, numeric=set(range(1, len(cols) + 1)))
    png = plots.group_accuracy_bars({"train": gap["train"], "test": gap["test"]}, cols,
                                    "Training against test accuracy", "mean per-class accuracy (%)")
    lead = (f"Mean per-class accuracy on {gap['train_images']:,} training images (at most "
            f"{gap['images_per_class']} per class, test transforms, tte {gap['tte']}) and on the test set. "
            "A gap that widens from the many- to the few-shot classes means the tuning fits the tail's few "
            "training images rather than learning what generalises.")
    page.section("gap", "Generalisation gap", table + page.figure("generalisation_gap", png, "train vs test"), lead)


def _signed(v) -> str:
    return "–" if v is None else f"{v:+.2f}"


def _per_class_section(page: _Page, r: RunRecord) -> None:
    test = r.metrics["test"]
    png = plots.per_class_accuracy(test["per_class"], r.counts, r.groups, r.group_names, r.classnames,
                                   {g: test.get(g) for g in r.group_names})
    order = count_order(r.counts)
    acc = [test["per_class"][c] for c in order]
    present = [a for a in acc if a is not None]
    lead = (f"Each bar is one class's test accuracy ({test['tte']}); classes run from the most to the fewest "
            f"training images, the line gives the count on a log scale. "
            f"Mean per-class accuracy {np.mean(present):.1f}%.") if present else ""
    page.section("per-class", "Per-class accuracy against training-image count",
                 page.figure("per_class_accuracy", png, "per-class accuracy against training images"), lead)


def _counts_section(page: _Page, r: RunRecord) -> None:
    png = plots.count_profile(r.counts, r.groups, r.group_names, r.classnames)
    page.section("class-counts", "Class-count profile", page.figure("class_counts", png, "class-count profile"),
                 "Training images per class, sorted, on a log scale; shading marks the groups.")


def _curves_section(page: _Page, r: RunRecord) -> None:
    png = plots.training_curves(r.curves, r.epoch_steps)
    src = "TensorBoard scalars in tb/" if (r.path / "tb").is_dir() else "metrics.json (per epoch)"
    page.section("training", "Training curves", page.figure("training_curves", png, "training curves"),
                 f"Loss, learning rate and training accuracy against the optimizer step (from {src}).")


def _confusions_section(page: _Page, r: RunRecord) -> None:
    tail = len(r.group_names) - 1
    name = _group_label(r.group_names[tail])
    title = f"Most frequent confusions among {name} classes"
    tte = r.metrics["test"]["tte"]
    if r.labels is None or tte not in r.preds:
        page.section("confusions", title, f'<p class="note">This run did not save its test predictions '
                     f"({PREDICTIONS}); runs of this tailtune version do.</p>")
        return
    rows = tail_confusions(r.labels, r.preds[tte], r.groups, tail, r.classnames)
    errors, dest = error_destinations(r.labels, r.preds[tte], r.groups, tail, len(r.group_names))
    png = plots.confusion_bars(rows, r.group_names, title)
    table = _table(["true class", "predicted as", "predicted class's group", "images", "% of true class"],
                   [[x["true_name"], x["pred_name"], r.group_names[x["pred_group"]], x["count"],
                     f"{x['share']:.1f}"] for x in rows], numeric={3, 4})
    where = ", ".join(f"{100 * n / errors:.0f}% to {g}" for g, n in zip(r.group_names, dest)) if errors else ""
    lead = (f"{errors} of the test images of {name} classes were misclassified"
            + (f" ({where} classes)." if errors else ".") + f" Predictions with {tte}.")
    page.section("confusions", title, page.figure("confusions", png, title) + table, lead)


def _config_section(page: _Page, r: RunRecord) -> None:
    cfg_path = r.path / "config.yaml"
    text = cfg_path.read_text() if cfg_path.exists() else "(no config.yaml)"
    page.section("config", "Configuration",
                 f"<details><summary>config.yaml (resolved)</summary><pre>{_e(text)}</pre></details>",
                 f"Run folder: {r.path.resolve()}")


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` and ``report/*.png`` into a finished run's folder; returns the page."""
    r = read_run(run_dir)
    b = r.metrics.get("backbone", {})
    page = _Page(r.path, f"tailtune report: {r.name}",
                 f"{r.metrics.get('dataset', '')} · {b.get('name', '')} ({b.get('pretrained', '')}) · "
                 f"{r.metrics.get('peft', '')} · overall {r.metrics['test']['overall']:.2f}%")
    _results_section(page, r)
    _gap_section(page, r)
    _per_class_section(page, r)
    _counts_section(page, r)
    _curves_section(page, r)
    _confusions_section(page, r)
    _config_section(page, r)
    return page.write()


# ---------------------------------------------------------------- comparison


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
                     "loss": _cfg(r.config, "loss.name"), "tte": t["tte"], "overall": t["overall"],
                     "balanced": _balanced(t), **{g: t.get(g) for g in groups}, "overall_no_tte": no_tte["overall"] if no_tte else None,
                     "macro_f1": t.get("macro_f1"), "trainable_params": p.get("trainable_total"),
                     "trainable_backbone_share": p.get("trainable_backbone_share"),
                     "train_s": r.metrics.get("time", {}).get("train_s"), **_gap_columns(r, groups)})
    return groups, rows


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
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(records)
    groups, rows = comparison_rows(records, labels)
    page = _Page(out, title or f"tailtune comparison of {len(records)} runs",
                 " · ".join(sorted({str(r['dataset']) for r in rows})))

    metric_cols = ["overall", "balanced", *groups, "overall_no_tte", "macro_f1"]
    gap_cols = [f"gap_{g}" for g in ["overall", *groups]]
    header = ["run", "PEFT", "loss", "TTE", "overall", "balanced", *groups, "overall, no TTE", "macro-F1",
              *[f"gap: {g}" for g in ["overall", *groups]], "trainable params", "train time"]
    best = {}
    for j, col in enumerate(metric_cols):
        vals = [row[col] for row in rows]
        top = max((v for v in vals if v is not None), default=None)
        for i, v in enumerate(vals):
            best[(i, 4 + j)] = v is not None and v == top
    table_rows = [[row["run"], row["peft"], row["loss"], row["tte"], *[_pct(row[c]) for c in metric_cols],
                   *[_signed(row[c]) for c in gap_cols],
                   "–" if row["trainable_params"] is None else
                   f"{row['trainable_params']:,} ({100 * (row['trainable_backbone_share'] or 0):.2f}%)",
                   _minutes(row["train_s"])] for row in rows]
    numeric = set(range(4, len(header)))
    page.section("results", "Results side by side",
                 _table(header, table_rows, numeric, bold=best),
                 "Test accuracy (%); the best value of each column is bold. Overall: over the test images; "
                 "balanced and the groups: means of per-class accuracies. Gap: mean per-class accuracy on "
                 "training images minus on test images (one view each; larger means more fitted to the training "
                 "images). Trainable parameters include the classifier; the percentage is the tuned share of the "
                 "backbone.")
    summary: dict = {"groups": groups, "runs": rows}
    if settings is not None:
        summary["settings"] = _spread_section(page, rows, settings, [*metric_cols, *gap_cols], groups)

    series = {row["run"]: {c: row[c] for c in ["overall", *groups]} for row in rows}
    png = plots.group_accuracy_bars(series, ["overall", *groups], "Test accuracy overall and per group")
    page.section("groups", "Accuracy per group", page.figure("group_accuracy", png, "accuracy per group"))

    ref = records[0]
    same = [(label, r) for label, r in zip(labels, records) if r.classnames == ref.classnames]
    skipped = [label for label, r in zip(labels, records) if r.classnames != ref.classnames]
    png = plots.per_class_overlay({label: r.metrics["test"]["per_class"] for label, r in same}, ref.counts,
                                  ref.groups, ref.group_names, ref.classnames)
    note = (f'<p class="note">Left out (other classes than {labels[0]}): {_e(", ".join(skipped))}.</p>'
            if skipped else "")
    page.section("per-class", "Per-class accuracy", page.figure("per_class_overlay", png, "per-class accuracy")
                 + note, f"Classes sorted by the training-image count of {labels[0]}.")

    diffs = config_differences([r.config for r in records])
    body = (_table(["config key", *labels], [[k, *[json.dumps(v, default=str) for v in vals]]
                                             for k, vals in diffs.items()])
            if diffs else "<p>The runs have the same configuration.</p>")
    page.section("differences", "What differs between the runs", body)
    page.section("runs", "Run folders", _table(["run", "folder"], [[row["run"], row["path"]] for row in rows]))
    if extra is not None:
        summary.update(extra(page, rows, groups))
    (out / "comparison.json").write_text(json.dumps(summary, indent=2))
    return page.write()


def _spread_section(page: _Page, rows: list[dict], settings: list[str], columns: list[str],
                    groups: list[str]) -> list[dict]:
    """Mean ± standard deviation over the seeds of each setting; returns the numbers."""
    from tailtune.report.spread import aggregate, format_mean_std

    if len(settings) != len(rows):
        raise ConfigError(f"{len(settings)} settings given for {len(rows)} runs; give one per run.")
    stats = aggregate(rows, settings, columns)
    shown = ["overall", "balanced", *groups, "overall_no_tte", "gap_overall", *[f"gap_{g}" for g in groups]]
    header = ["setting", "runs", "overall", "balanced", *groups, "overall, no TTE", "gap: overall",
              *[f"gap: {g}" for g in groups]]
    body = [[s["setting"], s["n"], *[format_mean_std(s[c]) for c in shown]] for s in stats]
    page.section("spread", "Mean and spread over seeds", _table(header, body, set(range(1, len(header)))),
                 "Each setting's runs differ only in train.seed: mean ± sample standard deviation (ddof 1) "
                 "of the test accuracy (%) and of the train − test gap.")
    return stats
