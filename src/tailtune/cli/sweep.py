"""``tailtune sweep`` and ``tailtune train ... seeds=0,1,2``: parsing and printing only; the
work is in sweep.py."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tailtune.errors import ConfigError
from tailtune.runtime.rundir import COMPARISON, read_metrics

SWEEP_HELP = """examples:
  tailtune sweep lift -d cifar100_ir100 data.root=DIR peft.r=4,8,16,32,64
  tailtune sweep lift peft.method=adaptformer,lora,full loss=ce,la seeds=0,1,2
  tailtune sweep ablation_bottleneck data.root=DIR          # the recipe's own grid
  tailtune sweep lift peft.r=4,8 --print-commands            # hand the points to a cluster launcher
  tailtune sweep lift loss=ce,la posthoc=none,la posthoc.tau=0,1,auto   # each run adjusted post hoc

key=v1,v2,... is an axis (commas inside [..] or quotes do not split), key=value a fixed override,
seeds=0,1,2 the seeds whose mean and spread the report shows; loss= and peft= stand for loss.name
and peft.method. posthoc=none,la,taunorm and posthoc.tau=0,0.5,1,auto (default auto) need no
training: each finished run is adjusted on its logits, one row per (point, method, tau).
Finished points are skipped: the same command continues an interrupted sweep."""


def summary_lines(sweep) -> list[str]:
    """One line per point: its state and, when finished, overall and per-group test accuracy."""
    from tailtune.report.sweep import tau_cell

    lines = []
    posthoc = sweep.posthoc_rows([p for p in sweep.points if p.finished]) if sweep.posthoc else []
    for p in sweep.points:
        if not p.finished:
            lines.append(f"{p.name}: {'interrupted' if p.interrupted else 'not run'}")
            continue
        m = read_metrics(p.run_dir)
        t, groups = m["test"], m["data"]["group_names"]
        gap = (m.get("generalisation_gap") or {}).get("gap", {})
        accs = "  ".join(f"{g} {t[g]:.2f}" for g in groups if t.get(g) is not None)
        gaps = "  ".join(f"{g} {gap[g]:+.2f}" for g in groups if gap.get(g) is not None)
        balanced = t.get("balanced", t.get("mean_class"))
        bal = "" if balanced is None else f"  balanced {balanced:.2f}"
        lines.append(f"{p.name}: overall {t['overall']:.2f}{bal}  {accs}" + (f"  | gap {gaps}" if gaps else ""))
        for r in (r for r in posthoc if r["point"] == p.name):
            accs = "  ".join(f"{g} {r[g]:.2f}" for g in groups if r.get(g) is not None)
            lines.append(f"  posthoc={r['posthoc']} tau {tau_cell(r)}: overall {r['overall']:.2f}  "
                         f"balanced {r['balanced']:.2f}  {accs}")
    return lines


def spread_lines(sweep) -> list[str]:
    """Mean ± std over seeds per setting, from the sweep's comparison.json (none without seeds)."""
    from tailtune.report.spread import format_mean_std

    path = sweep.dir / COMPARISON
    if not sweep.has_seeds or not path.exists():
        return []
    summary = json.loads(path.read_text())
    cols = ["overall", "balanced", *summary["groups"]]
    return [f"{s['setting']} ({s['n']} seeds): " + "  ".join(f"{c} {format_mean_std(s[c])}" for c in cols if c in s)
            for s in summary.get("settings", [])]


def _run(sweep, args) -> int:
    if args.print_commands:
        for p in sweep.pending():
            print(shlex.join(sweep.command(p, args.launcher, args.nproc_per_node)))
        return 0
    if args.report_only:
        report = sweep.report()  # adjusts the finished points post hoc first (posthoc=...)
        sweep.write_plan()
        print(f"comparison: {report}" if report else "comparison: needs two finished points")
        print("\n".join(summary_lines(sweep) + spread_lines(sweep)))
        return 0
    result = sweep.run(args.parallel, args.launcher, args.nproc_per_node)
    print("\n".join(summary_lines(sweep) + spread_lines(sweep)))
    for name, why in result["failed"].items():
        print(f"failed: {name}: {why}")
    return 1 if result["failed"] else 0


def cmd_sweep(args) -> int:
    from tailtune.runs.sweep import plan

    sweep = plan(args.base, args.data, tuple(args.config), args.overrides, args.out)
    return _run(sweep, args)


def train_seeds(args) -> int:
    """``tailtune train ... seeds=0,1,2``: one run per seed in one folder, with their mean and spread."""
    from tailtune.config import load_config
    from tailtune.runs.sweep import SEEDS, parse_arguments, plan
    from tailtune.runtime.rundir import default_name

    if args.dry_run:
        raise ConfigError("--dry-run times one setting; drop seeds=... (every seed costs the same).")
    axes, fixed = parse_arguments(args.overrides)
    if [a.key for a in axes] != [SEEDS]:
        raise ConfigError("tailtune train runs one setting (several seeds at most); sweep other keys with "
                          "`tailtune sweep BASE key=v1,v2`.")
    name = [f.partition("=")[2] for f in fixed if f.startswith("name=")]
    rest = [a for a in args.overrides if not a.startswith("name=")]
    cfg = load_config(args.recipe, args.data, args.config, [f for f in fixed if not f.startswith("name=")])
    out = Path(args.run_dir) if args.run_dir else Path(cfg.output_dir) / (name[-1] if name else
                                                                            f"{default_name(cfg)}_seeds")
    sweep = plan(args.recipe, args.data, tuple(args.config), rest, out)
    args.print_commands = args.report_only = False
    args.parallel, args.launcher, args.nproc_per_node = 1, None, 1
    return _run(sweep, args)


def add_sweep_parser(sub) -> None:
    """Add the sweep command."""
    import argparse

    from tailtune.runs.sweep import LAUNCHERS

    p = sub.add_parser("sweep", help="a grid of runs over config keys (key=v1,v2,...), one comparison report",
                       epilog=SWEEP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE", help="recipe name (`tailtune list recipes`) or YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=V1,V2,...", help="axes, seeds=... and fixed key=value")
    p.add_argument("--data", "-d", default=None, help="packaged data preset or YAML file, e.g. cifar100_ir100")
    p.add_argument("--config", "-c", action="append", default=[], help="YAML file merged on top (repeatable)")
    p.add_argument("--out", "-o", default=None, help="sweep folder (default: output_dir/sweep_<base>_<keys>)")
    p.add_argument("--parallel", "-j", type=int, default=1, metavar="N",
                   help="points running at once, as subprocesses (default 1: one after another, in this process)")
    p.add_argument("--launcher", choices=sorted(LAUNCHERS), default=None,
                   help="start each point with this launcher (a subprocess per point)")
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="K", help="processes per point with --launcher")
    p.add_argument("--print-commands", action="store_true",
                   help="print the command line of every unfinished point (for a cluster launcher) and exit")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the comparison of the finished points (adjusting them first "
                        "where posthoc=... is swept)")
    p.set_defaults(func=cmd_sweep)
