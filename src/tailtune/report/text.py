"""Plain-text tables of results: a run's metrics, its generalisation gap, its model selection,
and the comparison of recipes."""

from __future__ import annotations

from collections.abc import Sequence


def format_results(metrics: dict) -> str:
    """A plain-text results table of a run's metrics."""
    test = metrics["test"]
    groups = metrics["data"]["group_names"]
    # overall: image accuracy; balanced and the groups: means of per-class accuracies (metrics.py).
    # metrics.json of older runs has the same number as mean_class, or neither.
    head = ["overall", "balanced", *groups, "macro-F1"]
    vals = [test["overall"], test.get("balanced", test.get("mean_class")), *[test.get(g) for g in groups],
            test["macro_f1"]]
    cells = ["-" if v is None else f"{v:.2f}" for v in vals]
    widths = [max(len(h), len(c)) for h, c in zip(head, cells)]
    line = "  ".join(h.rjust(w) for h, w in zip(head, widths))
    row = "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    lines = [f"results on {metrics['dataset']} test set (tte: {test['tte']}, {test['views_per_image']} view(s)/image):",
             line, row]
    if "harmonic_mean" in test:  # metrics.json of older runs lacks the per-class summaries
        lines.append(f"per-class accuracy: worst {test['worst_class']:.2f}, harmonic {test['harmonic_mean']:.2f}, "
                     f"geometric {test['geometric_mean']:.2f} (balanced, groups: means over classes)")
    decoupled = metrics.get("decoupled")  # a cRT / LWS run (runs/decoupled.py); older metrics.json: none
    if decoupled:
        was = decoupled.get("source_test_overall")
        lines.append(f"{decoupled.get('name', decoupled['method'])} of run {decoupled['from_run']} (checkpoint sha256 "
                     f"{decoupled['checkpoint_sha256'][:12]}...)"
                     + (f"; the source run's test accuracy: {was:.2f}" if was is not None else ""))
    if test.get("top5") is not None:  # metrics.json of older runs lacks the probability metrics
        lines.append(format_calibration(test, metrics.get("calibration"), groups))
    if "params" in metrics:
        p = metrics["params"]
        lines.append(f"trainable: {p['trainable_backbone']:,} backbone ({100 * p['trainable_backbone_share']:.3f}%) "
                     + (f"+ {p['trainable_text']:,} text side " if p.get("trainable_text") else "")
                     + f"+ {p['trainable_head']:,} head parameters")
    selection = describe_selection(metrics)
    if selection:
        lines.append(selection)
    if metrics.get("generalisation_gap"):
        lines.append(format_gap(metrics["generalisation_gap"], groups))
    return "\n".join(lines)


def format_calibration(test: dict, calibration: dict | None, group_names: Sequence[str]) -> str:
    """top-5, ECE, NLL and Brier (overall, ECE per group), and temperature scaling's effect if applied."""
    def num(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)

    per_group = test.get("group_calibration") or {}
    ece_groups = ", ".join(f"{g} {num((per_group.get(g) or {}).get('ece'))}" for g in group_names if g in per_group)
    line = (f"top-5 {num(test['top5'])}, ECE {num(test.get('ece'))}%"
            + (f" ({ece_groups})" if ece_groups else "")
            + f", NLL {num(test.get('nll'), '.4f')}, Brier {num(test.get('brier'), '.4f')}")
    if calibration and calibration.get("method") == "temperature":
        after = calibration.get("test") or {}
        how = f"T = {calibration['temperature']:.3f}, fitted on {calibration.get('fitted_on', 'val')}"
        if calibration.get("tte", test.get("tte")) == test.get("tte"):
            line += (f"\ntemperature scaling ({how}): ECE {num(test.get('ece'))} -> {num(after.get('ece'))}%, "
                     f"NLL {num(test.get('nll'), '.4f')} -> {num(after.get('nll'), '.4f')}, "
                     f"Brier {num(test.get('brier'), '.4f')} -> {num(after.get('brier'), '.4f')} (accuracy unchanged)")
        else:  # measured with other views (tailtune eval --tte X --calibrate temperature)
            line += (f"\ntemperature scaling ({how}, tte {calibration['tte']}): ECE {num(after.get('ece'))}%, "
                     f"NLL {num(after.get('nll'), '.4f')}, Brier {num(after.get('brier'), '.4f')}")
    return line


def format_gap(gap: dict, group_names: Sequence[str]) -> str:
    """A plain-text table: train, test and train - test accuracy overall and per group."""
    cols = ["overall", *group_names]
    head = ["", *cols]
    rows = [["train", *[gap["train"][c] for c in cols]], ["test", *[gap["test"][c] for c in cols]],
            ["gap", *[gap["gap"][c] for c in cols]]]
    cells = [head] + [[r[0], *["-" if v is None else f"{v:+.2f}" if r[0] == "gap" else f"{v:.2f}" for v in r[1:]]]
                      for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    tte = f", tte {gap['tte']}" if gap.get("tte") else ""
    return (f"generalisation gap (mean per-class accuracy{tte}, train - test; positive: better on the training "
            "images):\n" + "\n".join(lines))


def describe_selection(metrics: dict) -> str | None:
    """One line for the results table: which validation split, what was selected."""
    if "selection" not in metrics:
        return None
    used, val = metrics["selection"], metrics.get("val")
    if used == "none":  # no validation split (training.selection.NONE)
        return "validation: none; the final epoch is reported (the test set is never used for selection)."
    ms = metrics.get("model_selection") or {}
    chosen = (f"epoch {ms['best_epoch']} selected by val accuracy" if ms.get("by_val_accuracy")
              else "final epoch (train.select_by_val=false)")
    acc = f" {val['overall']:.2f}" if val else ""
    return f"validation: {used}{acc} (no tte); {chosen}; the test set is never used for selection."


def format_comparison(result: dict) -> str:
    """One table: accuracy overall, balanced and per group, trainable parameters and time per mode."""
    groups = result["group_names"]
    header = ["mode", "overall", "balanced", *groups, *[f"gap {g}" for g in groups], "trainable params", "time"]
    table = [header]
    for r in result["rows"]:
        t, p = r["test"], r["params"]
        balanced = t.get("balanced", t.get("mean_class"))
        table.append([r["mode"], f"{t['overall']:.2f}", "-" if balanced is None else f"{balanced:.2f}",
                      *["-" if t.get(g) is None else f"{t[g]:.2f}" for g in groups],
                      *[_gap(r, g) for g in groups],
                      f"{p['trainable_total']:,} ({100 * p['trainable_backbone_share']:.2f}% of backbone)",
                      f"{r['seconds'] / 60:.1f} min"])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in table]
    tte = result["rows"][0]["test"].get("tte", "none") if result["rows"] else "none"
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"(test accuracy in %, test-time ensemble: {tte}; same data, epochs and schedule for every mode;"
                 " overall: over the test images; balanced and groups: means of per-class accuracies;"
                 " gap: train - test mean per-class accuracy, one view)")
    if result.get("report"):
        lines.append(f"report: {result['report']}")
    return "\n".join(lines)


def _gap(row: dict, group: str) -> str:
    value = ((row.get("generalisation_gap") or {}).get("gap") or {}).get(group)
    return "-" if value is None else f"{value:+.2f}"
