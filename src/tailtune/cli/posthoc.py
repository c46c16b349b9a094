"""``tailtune eval RUN --posthoc la|taunorm [--tau X | --tau auto | --tau 0,0.5,1,auto]``: parsing and
printing only; the work is in runs/posthoc.py and evaluation/posthoc.py."""

from __future__ import annotations

import json

from tailtune.errors import ConfigError

POSTHOC_HELP = ("post-hoc adjustment of the test logits, no retraining: la (logit adjustment z - tau log prior, "
                "the run's training class frequencies) or taunorm (linear head: class vectors w / ||w||^tau); "
                "la,taunorm for both. Prints before / after; with one tau per method, records it in metrics.json "
                "(\"posthoc\")")
TAU_HELP = ("with --posthoc: tau, `auto` (chosen on the validation split: the best val balanced accuracy over "
            "0..2 step 0.1 for la, 0..1 step 0.1 for taunorm; never on the test set) or several, comma-separated "
            "(0,0.5,1,auto: a table, nothing recorded). Default: auto")


def _cells(m: dict, groups: list[str]) -> list[str]:
    keys = ["overall", "balanced", *groups, "top5", "ece", "nll"]
    return [f"{m[k]:.2f}" if k != "nll" and m.get(k) is not None else
            (f"{m[k]:.4f}" if m.get(k) is not None else "-") for k in keys]


def format_posthoc(result: dict, groups: list[str]) -> str:
    """Before and each after side by side, with the change of the accuracies."""
    from tailtune.evaluation.posthoc import CRITERION, METHOD_NAMES

    head = ["", "tau", "from", "overall", "balanced", *groups, "top5", "ECE", "NLL"]
    rows = [["before", "-", "-", *_cells(result["before"], groups)]]
    for r in result["rows"]:
        rows.append(["after", f"{r['tau']:g}", r["tau_from"], *_cells(r["after"], groups)])
        if len(result["rows"]) == 1:
            b, a = result["before"], r["after"]
            rows.append(["change", "", "", *[f"{a[k] - b[k]:+.2f}" if a.get(k) is not None and b.get(k) is not None
                                                else "-" for k in ["overall", "balanced", *groups, "top5", "ece"]],
                         f"{a['nll'] - b['nll']:+.4f}"])
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    lines = [f"post-hoc {METHOD_NAMES[result['method']]} ({result['method']}) on the {result['split']} split "
             f"(tte {result['tte']}; accuracies and ECE in %, NLL in nats/image):"]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in [head, *rows]]
    if result["val"]:
        grid = result["grid"]
        best = next(r["tau"] for r in result["rows"] if r["tau_from"] == "val")
        score = dict(result["val"])[best]
        lines.append(f"tau {best:g} chosen on the validation split: the best val {CRITERION} accuracy "
                     f"({score:.2f}) over tau = {grid[0]:g}..{grid[-1]:g} step {grid[1] - grid[0]:g} "
                     "(the smallest tau on a tie)")
    return "\n".join(lines)


def cmd_posthoc(args) -> int:
    from tailtune.runs.posthoc import entry, parse_methods, parse_taus, posthoc_eval, record_posthoc
    from tailtune.runtime.rundir import read_metrics

    if args.split != "test":
        raise ConfigError(f"--posthoc reports on the test split (tau chosen on the validation split); drop "
                          f"--split {args.split}.")
    methods = parse_methods(args.posthoc)
    taus = parse_taus("auto" if args.tau is None else args.tau)
    saved = read_metrics(args.run_dir)
    if args.precision not in (None, "train") or args.device is not None:
        from tailtune.cli.results import check_options
        from tailtune.runtime.rundir import read_config

        check_options(args.device, args.precision, read_config(args.run_dir).train.device)
    import sys

    lines = []
    results = posthoc_eval(args.run_dir, methods, taus, args.tte, args.precision, args.device, args.quiet,
                           recompute=args.recompute_logits, say=lines.append)
    for line in lines:  # where the logits came from; stdout keeps the JSON alone
        print(line, file=sys.stderr if args.json else sys.stdout)
    own = (args.tte in (None, saved["test"]["tte"]) and args.precision is None)
    record = own and len(taus) == 1
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        groups = list(saved["data"]["group_names"])
        print("\n\n".join(format_posthoc(r, groups) for r in results))
    if record:
        path = record_posthoc(args.run_dir, [entry(r, r["rows"][0]) for r in results])
        if not args.json:
            print(f"recorded in {path} (\"posthoc\": {', '.join(methods)})")
    elif not args.json:
        why = ("several taus: give one to record it" if own else
               "another --tte or --precision than the run's own: metrics.json keeps the run's protocol")
        print(f"not recorded in metrics.json ({why})")
    return 0
