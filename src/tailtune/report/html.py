"""A run's report as a self-contained HTML page plus PNGs, and the page's building blocks.

The report reads only the run folder (see :mod:`tailtune.report.record`). Figures are
written as PNGs into ``report/`` and embedded in ``report.html`` as base64, so the page
opens anywhere on its own. :mod:`tailtune.report.compare` builds the side-by-side page of
several runs from the same blocks (:class:`Page`, :func:`html_table`, the number formats).
"""

from __future__ import annotations

import base64
import html
import time
from collections import Counter
from pathlib import Path

import numpy as np

from tailtune.data.longtail import count_order
from tailtune.report import plots
from tailtune.report.plots import share
from tailtune.report.record import (
    BEYOND_TOP1,
    RunRecord,
    balanced,
    beyond_top1,
    config_value,
    has_beyond_top1,
    read_run,
)
from tailtune.runtime.files import write_bytes, write_text, writing
from tailtune.runtime.rundir import CONFIG, FIGURES, METRICS, PREDICTIONS, REPORT, TB

TOP_CONFUSIONS = 12
BEYOND_LEAD = ("Beyond top-1: top-5 accuracy (%, the label among the 5 highest scores), expected calibration "
               "error (%, 15 equal-width bins of the top-1 confidence; lower is better) and negative "
               "log-likelihood (nats per image; lower is better), over all test images and over each group's.")


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
main{max-width:1320px;margin:0 auto;padding:24px 28px 48px}
header{background:#1d2330;color:#fff;padding:22px 28px}header h1{margin:0 0 4px;font-size:1.6em}
header p{margin:0;color:#c9cede}
nav{max-width:1320px;margin:0 auto;padding:10px 28px 0;font-size:.92em}nav a{margin-right:16px;color:#0b5cad}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:18px 22px;margin:18px 0;
min-width:0}
.scroll{overflow-x:auto;max-width:100%;margin:8px 0 14px}.scroll table{margin:0}
h2{margin:0 0 10px;font-size:1.25em}p.lead{margin:0 0 12px;color:#4a5163}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.9em}
th,td{padding:5px 8px;border-bottom:1px solid #e3e6ec;text-align:left}th{background:#f0f2f6}
th.span{text-align:center;border-left:2px solid #fff}td.num{white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}tr.best td.num{font-weight:600}
td b{color:#0b5cad}img{max-width:100%;height:auto;display:block;margin:6px 0}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:.85em;border-radius:6px}
.facts td:first-child{color:#4a5163}.note{color:#8a5a00}details summary{cursor:pointer;color:#0b5cad}
"""


def escape(value) -> str:
    return html.escape(str(value))


def pct(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def nats(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def signed(v) -> str:
    return "–" if v is None else f"{v:+.2f}"


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def html_table(header: list[str] | None, rows: list[list], numeric: set[int] = frozenset(),
               bold: dict | None = None, cls: str = "", spans: list[tuple[str, int]] | None = None) -> str:
    """An HTML table (no header row if ``header`` is None); ``bold[(row, col)]`` marks best values;
    ``spans`` [(title, number of columns)] adds a header row above ``header`` that names groups of
    columns; cells are escaped. The table scrolls sideways inside its section when it is wider."""
    head = "".join(f'<th class="num">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(header or []))
    over = "".join(f'<th colspan="{n}" class="span">{escape(t)}</th>' if n > 1 else f"<th>{escape(t)}</th>"
                   for t, n in spans or [])
    thead = (f"<thead>{f'<tr>{over}</tr>' if spans else ''}<tr>{head}</tr></thead>" if header else "")
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, c in enumerate(row):
            text = f"<b>{escape(c)}</b>" if bold and bold.get((r, i)) else escape(c)
            cells.append(f'<td class="num">{text}</td>' if i in numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attr = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{attr}>{thead}<tbody>{"".join(body)}</tbody></table></div>'


class Page:
    """Collects sections and figures; writes PNGs and the self-contained HTML page."""

    def __init__(self, out_dir: Path, title: str, subtitle: str):
        self.out_dir = out_dir
        self.title = title
        self.subtitle = subtitle
        self.sections: list[tuple[str, str, str]] = []
        self.figures: dict[str, bytes] = {}

    def figure(self, name: str, png: bytes, alt: str) -> str:
        self.figures[name] = png
        return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{escape(alt)}">'

    def section(self, sid: str, title: str, body: str, lead: str = "") -> None:
        lead_html = f'<p class="lead">{escape(lead)}</p>' if lead else ""
        self.sections.append((sid, title, f'<section id="{sid}"><h2>{escape(title)}</h2>{lead_html}{body}</section>'))

    def write(self) -> Path:
        fig_dir = self.out_dir / FIGURES
        with writing(fig_dir):
            fig_dir.mkdir(parents=True, exist_ok=True)
        for name, png in self.figures.items():
            write_bytes(fig_dir / f"{name}.png", png)
        nav = "".join(f'<a href="#{sid}">{escape(t)}</a>' for sid, t, _ in self.sections)
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{escape(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<header><h1>{escape(self.title)}</h1><p>{escape(self.subtitle)}</p></header>"
                f"<nav>{nav}</nav><main>{''.join(s for _, _, s in self.sections)}"
                f'<p class="lead">Written by tailtune on {escape(time.strftime("%Y-%m-%d %H:%M"))}.</p></main>'
                f"</body></html>\n")
        path = self.out_dir / REPORT
        write_text(path, page)
        return path


def beyond_top1_columns(values: list[dict], groups: list[str]) -> list[tuple[str, str, bool, list[str]]]:
    """(key, title, lower is better, [column keys: overall, then each group]) of each view beyond
    top-1 that at least one of ``values`` (rows of :func:`~tailtune.report.record.beyond_top1`) has."""
    return [(key, title, lower, [key, *[f"{key}_{g}" for g in groups]])
            for key, title, lower in BEYOND_TOP1 if has_beyond_top1(values, key)]


def beyond_top1_table(lead: list[str], lead_rows: list[list], values: list[dict], groups: list[str],
                      bold: dict | None = None) -> str:
    """Top-5, ECE and NLL, overall and per group, one row per evaluation or run ("" when no row
    has any: runs from before these metrics). ``lead`` names the first columns, ``lead_rows``
    fills them; ``bold[(row, col)]`` as in :func:`html_table`."""
    cols = beyond_top1_columns(values, groups)
    if not cols:
        return ""
    header = [*lead, *[c for _ in cols for c in ["overall", *groups]]]
    rows = [[*lr, *[(nats if key == "nll" else pct)(v.get(k)) for key, _, _, keys in cols for k in keys]]
            for lr, v in zip(lead_rows, values)]
    spans = [("", len(lead)), *[(title, len(keys)) for _, title, _, keys in cols]]
    return html_table(header, rows, numeric=set(range(len(lead), len(header))), bold=bold, spans=spans)


def _group_label(name: str) -> str:
    return f"{name}-shot" if name in ("many", "medium", "few") else name


def _results_section(page: Page, r: RunRecord) -> None:
    groups = r.group_names
    header = ["evaluation", "views / image", "overall", "balanced", *groups, "macro-F1", "worst class"]
    rows = []
    for label, t in r.evaluations():
        rows.append([label, t.get("views_per_image", "–"), pct(t["overall"]), pct(balanced(t)),
                     *[pct(t.get(g)) for g in groups], pct(t.get("macro_f1")), pct(t.get("worst_class"))])
    table = html_table(header, rows, numeric=set(range(1, len(header))))
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
                        f"{p.get('backbone_total', 0):,})"
                        + (f"; text side ({config_value(r.config, 'peft.text.method')}): "
                           f"{p['trainable_text']:,} trainable parameters" if p.get("trainable_text") else "")],
        ["classifier", f"{config_value(r.config, 'head.type')} head, {p.get('trainable_head', 0):,} parameters, "
                       f"initialised by {r.metrics.get('head_init', '–')}"],
        ["training", f"loss {config_value(r.config, 'loss.name')}, {_epochs(r.config)}, "
                     f"batch {config_value(r.config, 'train.batch_size')}, lr {config_value(r.config, 'train.lr')}"],
        ["time", f"training {minutes(tm.get('train_s'))}, evaluation {minutes(tm.get('eval_s'))}, "
                 f"total {minutes(tm.get('total_s'))}"],
    ]
    notes = "".join(f'<p class="note">note: {escape(n)}</p>' for n in r.metrics.get("notes", []))
    beyond = beyond_top1_table(["evaluation"], [[label] for label, _ in r.evaluations()],
                               [beyond_top1(t, groups) for _, t in r.evaluations()], groups)
    if beyond:
        beyond = (f'<p class="lead">{escape(BEYOND_LEAD)}</p>' + beyond)
    page.section("results", "Results", table + beyond + page.figure("metrics", png, "accuracy per group") +
                 html_table(None, facts, cls="facts") + notes,
                 "Test accuracy (%): overall over the test images; balanced (the mean per-class accuracy) "
                 "and each group of classes by training-image count as means of their classes' accuracies.")


def _epochs(config: dict) -> str:
    """train.epochs, and the extensions of a run resumed with --extend-epochs (train.extra_epochs)."""
    extra = config_value(config, "train.extra_epochs")
    epochs = f"{config_value(config, 'train.epochs')} epochs"
    if not isinstance(extra, list) or not extra:
        return epochs
    return (f"{epochs} + {' + '.join(map(str, extra))} extra (extended; the learning-rate schedule restarted from "
            "train.lr at each extension)")


def _gap_section(page: Page, r: RunRecord) -> None:
    """Train against test accuracy per group (runs that measured it: eval.gap_per_class > 0)."""
    gap = r.metrics.get("generalisation_gap")
    if not gap:
        return
    cols = ["overall", *r.group_names]
    rows = [["train", *[pct(gap["train"].get(c)) for c in cols]],
            ["test", *[pct(gap["test"].get(c)) for c in cols]],
            ["gap (train − test)", *[signed(gap["gap"].get(c)) for c in cols]],
            ["classes", *[gap["classes"].get(c, "–") for c in cols]]]
    table = html_table(["", *cols], rows, numeric=set(range(1, len(cols) + 1)))
    png = plots.group_accuracy_bars({"train": gap["train"], "test": gap["test"]}, cols,
                                    "Training against test accuracy", "mean per-class accuracy (%)")
    lead = (f"Mean per-class accuracy on {gap['train_images']:,} training images (at most "
            f"{gap['images_per_class']} per class, test transforms, tte {gap['tte']}) and on the test set. "
            "A gap that widens from the many- to the few-shot classes means the tuning fits the tail's few "
            "training images rather than learning what generalises.")
    page.section("gap", "Generalisation gap", table + page.figure("generalisation_gap", png, "train vs test"), lead)


def _per_class_section(page: Page, r: RunRecord) -> None:
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


def _counts_section(page: Page, r: RunRecord) -> None:
    png = plots.count_profile(r.counts, r.groups, r.group_names, r.classnames)
    page.section("class-counts", "Class-count profile", page.figure("class_counts", png, "class-count profile"),
                 "Training images per class, sorted, on a log scale; shading marks the groups.")


def _curves_section(page: Page, r: RunRecord) -> None:
    png = plots.training_curves(r.curves, r.epoch_steps)
    src = f"TensorBoard scalars in {TB}/" if (r.path / TB).is_dir() else f"{METRICS} (per epoch)"
    page.section("training", "Training curves", page.figure("training_curves", png, "training curves"),
                 f"Loss, learning rate and training accuracy against the optimizer step (from {src}).")


def _confusions_section(page: Page, r: RunRecord) -> None:
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
    table = html_table(["true class", "predicted as", "predicted class's group", "images", "% of true class"],
                       [[x["true_name"], x["pred_name"], r.group_names[x["pred_group"]], x["count"],
                         "<0.1" if 0 < x["share"] < 0.1 else f"{x['share']:.1f}"] for x in rows], numeric={3, 4})
    where = ", ".join(f"{share(100 * n / errors)} to {g}" for g, n in zip(r.group_names, dest)) if errors else ""
    lead = (f"{errors} of the test images of {name} classes were misclassified"
            + (f" ({where} classes)." if errors else ".") + f" Predictions with {tte}.")
    page.section("confusions", title, page.figure("confusions", png, title) + table, lead)


def _calibration_section(page: Page, r: RunRecord) -> None:
    """Reliability diagrams (overall and per group) and, where applied, temperature scaling's
    and the post-hoc adjustments' before / after (runs that recorded them)."""
    test = r.metrics["test"]
    body = ""
    panels = ["overall", *r.group_names]
    if test.get("reliability"):
        ece = {"run": {"overall": test.get("ece"),
                       **{g: ((test.get("group_calibration") or {}).get(g) or {}).get("ece") for g in r.group_names}}}
        png = plots.reliability_diagrams({"run": test["reliability"]}, panels, ece,
                                         f"Reliability of the test predictions ({test['tte']})")
        body += page.figure("reliability", png, "reliability diagrams overall and per group")
    cal = r.metrics.get("calibration")
    if cal:
        after = cal.get("test") or {}
        rows = [["as trained (temperature 1)", pct(test.get("ece")), nats(test.get("nll")), nats(test.get("brier"))],
                [f"{cal.get('method', 'temperature')} scaling, T = {cal.get('temperature', 0):.3f} "
                 f"(fitted on {cal.get('fitted_on', '–')})", pct(after.get("ece")), nats(after.get("nll")),
                 nats(after.get("brier"))]]
        body += ('<p class="lead">Calibration of the test predictions before and after scaling the logits by 1/T '
                 "(the argmax, hence the accuracy, is unchanged).</p>"
                 + html_table(["test predictions", "ECE (%)", "NLL (nats)", "Brier"], rows, {1, 2, 3}))
    posthoc = r.metrics.get("posthoc") or []
    if posthoc:
        cols = ["overall", "balanced", *r.group_names, "top5", "ece", "nll"]
        header = ["adjustment", "", "overall", "balanced", *r.group_names, "top-5", "ECE (%)", "NLL (nats)"]
        rows = []
        for e in posthoc:
            tau = e.get("tau")
            what = (f"{e.get('method', '–')}, τ = {'–' if tau is None else f'{tau:g}'} "
                    f"({'chosen on ' + e['tau_from'] if e.get('tau_from') == 'val' else e.get('tau_from', '–')})")
            for when in ("before", "after"):
                vals = e.get(when) or {}
                rows.append([what if when == "before" else "", when,
                             *[(nats if c == "nll" else pct)(vals.get(c)) for c in cols]])
        body += ('<p class="lead">Post-hoc adjustments of the trained model\'s test logits (no retraining; τ chosen '
                 "on the validation split or given, never on the test set): test accuracy (%) before and after.</p>"
                 + html_table(header, rows, set(range(2, len(header)))))
    if body:
        page.section("calibration", "Calibration and post-hoc adjustment", body,
                     "Reliability: the test images binned by their top-1 confidence (15 equal-width bins); each "
                     "bin's accuracy against its mean confidence. A calibrated model follows the diagonal; bars "
                     "below it mean over-confidence." if test.get("reliability") else "")


def _config_section(page: Page, r: RunRecord) -> None:
    text = (r.path / CONFIG).read_text()
    page.section("config", "Configuration",
                 f"<details><summary>{CONFIG} (resolved)</summary><pre>{escape(text)}</pre></details>",
                 f"Run folder: {r.path.resolve()}")


def _decoupled(metrics: dict) -> str:
    """A cRT / LWS run's source (runs/decoupled.py), for the subtitle; other runs: nothing."""
    d = metrics.get("decoupled")
    return f" · {d.get('name', d['method'])} of run {d['from_run']}" if d else ""


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` and ``report/*.png`` into a finished run's folder; returns the page."""
    r = read_run(run_dir)
    b = r.metrics.get("backbone", {})
    page = Page(r.path, f"tailtune report: {r.name}",
                 f"{r.metrics.get('dataset', '')} · {b.get('name', '')} ({b.get('pretrained', '')}) · "
                 f"{r.metrics.get('peft', '')} · overall {r.metrics['test']['overall']:.2f}%" + _decoupled(r.metrics))
    _results_section(page, r)
    _gap_section(page, r)
    _per_class_section(page, r)
    _calibration_section(page, r)
    _counts_section(page, r)
    _curves_section(page, r)
    _confusions_section(page, r)
    _config_section(page, r)
    return page.write()
