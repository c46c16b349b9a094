"""Command line: parse, build a config, call the library. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys

from tailtune import config as C
from tailtune.cli.data import add_data_parser
from tailtune.cli.posthoc import POSTHOC_HELP, TAU_HELP
from tailtune.cli.results import add_results_parsers
from tailtune.cli.sweep import add_sweep_parser
from tailtune.errors import ConfigError, TailtuneError
from tailtune.version import __version__

DEFAULT_RECIPE = "demo"
# Commands that run a model: the CLI owns its process and tunes it for them (_tune_process).
COMPUTE_COMMANDS = ("train", "eval", "zeroshot", "compare-recipes", "sweep", "predict", "export")


def _config_args(p: argparse.ArgumentParser, default_recipe: str | None) -> None:
    p.add_argument("--recipe", "-r", default=default_recipe,
                   help=f"packaged recipe or YAML file (default: {default_recipe}); `tailtune list recipes`")
    p.add_argument("--data", "-d", default=None, help="packaged data preset or YAML file, e.g. cifar100_ir100")
    p.add_argument("--config", "-c", action="append", default=[], help="YAML file merged on top (repeatable)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5 data.root=/data")


def _load(args):
    from tailtune.config import load_config

    return load_config(args.recipe, args.data, args.config, args.overrides)


def cmd_train(args) -> int:
    from tailtune.runs.run import fit, resume
    from tailtune.runtime.rundir import read_config

    if args.extend_epochs is not None and args.extend_epochs < 1:
        raise ConfigError(f"--extend-epochs {args.extend_epochs}: give the number of epochs to add, >= 1.")
    if args.resume:
        if args.overrides or args.data or args.config or args.recipe != DEFAULT_RECIPE or args.dry_run \
                or args.from_run:
            raise ConfigError("--resume continues a run with its own saved config; give only the run folder "
                              "(tailtune train --resume RUN_DIR; to train longer: --extend-epochs N).")
        metrics = resume(args.resume, args.extend_epochs or 0, break_lock=args.break_lock)
        _print_if_quiet(metrics, read_config(args.resume).quiet)
        return 0
    if args.extend_epochs is not None:
        raise ConfigError("--extend-epochs N extends an interrupted run: tailtune train --resume RUN_DIR "
                          "--extend-epochs N (a new run sets train.epochs).")
    if any(o.startswith("seeds=") for o in args.overrides):  # one run per seed, with their mean and spread
        from tailtune.cli.sweep import train_seeds

        return train_seeds(args)
    if args.from_run:  # a decoupled run (cRT / LWS) of a finished run's trained backbone
        from tailtune.runs.decoupled import decoupled_config

        cfg = decoupled_config(args.recipe, args.from_run, args.data, args.config, args.overrides)
    else:
        cfg = _load(args)
    if args.dry_run:
        from tailtune.runs.estimate import dry_run

        print("\n".join(dry_run(cfg, args.dry_run_steps).lines))
        return 0
    _print_if_quiet(fit(cfg, args.run_dir, break_lock=args.break_lock), cfg.quiet)
    return 0


def _print_if_quiet(metrics: dict, quiet: bool) -> None:
    """quiet=true keeps the run's log off the console, but not its results (printed once, by rank 0)."""
    from tailtune.report.text import format_results
    from tailtune.runtime.distributed import env_info

    if quiet and env_info().is_main:
        print(format_results(metrics))


def cmd_eval(args) -> int:
    """Evaluate a finished run. A plain re-evaluation (the test split with the run's own test-time
    ensemble and precision) is a reproduction check: metrics that differ from metrics.json are
    named and exit 1. Another --tte, --split or --precision is a new measurement: exit 0."""
    from tailtune.evaluation.metrics import differing_metrics
    from tailtune.report.text import format_results
    from tailtune.runs.run import evaluate
    from tailtune.runtime.rundir import read_metrics

    if args.posthoc is not None:  # a new measurement (before / after), not a reproduction check
        from tailtune.cli.posthoc import cmd_posthoc

        return cmd_posthoc(args)
    if args.tau is not None:
        raise ConfigError("--tau goes with --posthoc la|taunorm (e.g. tailtune eval RUN --posthoc la --tau auto).")
    if args.recompute_logits and args.calibrate == "none":
        raise ConfigError("--recompute-logits goes with --posthoc or --calibrate (a plain `tailtune eval RUN` always "
                          "runs the model: it is the check that the run reproduces).")
    saved = read_metrics(args.run_dir)
    if args.precision not in (None, "train") or args.device is not None:
        from tailtune.cli.results import check_options
        from tailtune.runtime.rundir import read_config

        check_options(args.device, args.precision, read_config(args.run_dir).train.device)
    test = evaluate(args.run_dir, args.tte, args.split, quiet=args.quiet, precision=args.precision,
                    device=args.device, calibrate=args.calibrate, recompute=args.recompute_logits)
    calibration = test.pop("calibration", None)  # --calibrate: recorded at metrics.json's top level
    logits_line = test.pop("logits", None)  # --calibrate: where its logits came from
    stored = test.pop("test_logits", None) == "stored"  # then the test metrics are the stored logits': no check
    if logits_line:
        print(logits_line, file=sys.stderr if args.json else sys.stdout)
    gap = None
    if args.split == "train":  # against the saved test accuracy with the same views: the generalisation gap
        from tailtune.evaluation.gap import gap_against

        gap = gap_against(saved, test)
        test = dict(test, generalisation_gap=gap)
    was = saved["test"].get("precision")  # runs saved before eval.precision existed lack it
    same_protocol = (args.split == "test" and test["tte"] == saved["test"]["tte"] and not stored
                     and (was == test["precision"] if was else args.precision is None))
    differing = differing_metrics(saved["test"], test) if same_protocol else []
    if args.json:
        print(json.dumps(dict(test, calibration=calibration) if calibration else test, indent=2))
    else:
        shown = dict(saved, test=test, dataset=f"{saved['dataset']} ({args.split} split)", generalisation_gap=None,
                     calibration=calibration)
        print(format_results(shown))
        if args.split == "train":
            from tailtune.report.text import format_gap

            print(format_gap(gap, saved["data"]["group_names"]) if gap else
                  f"(no gap: the run saved no test metrics with tte {test['tte']}; use --tte none or the run's own)")
        if stored:
            print(f"test metrics from the stored logits, not a reproduction check (`tailtune eval {args.run_dir}` "
                  "runs the model)")
        elif same_protocol and not differing:
            print("matches metrics.json")
        elif not same_protocol and args.split == "test" and test["tte"] == saved["test"]["tte"]:  # another precision
            same = abs(test["overall"] - saved["test"]["overall"]) < 1e-6
            print("matches metrics.json" if same else
                  f"differs from metrics.json (saved overall {saved['test']['overall']:.4f}"
                  + (f", evaluated in {was}; now {test['precision']}" if was and was != test["precision"] else "")
                  + ")")
    if differing:
        shown_diffs = ", ".join(f"{k} {new} (saved {old})" for k, old, new in differing[:8])
        more = f" and {len(differing) - 8} more" if len(differing) > 8 else ""
        print(f"error: re-evaluating {args.run_dir} (test split, tte {test['tte']}, {test['precision']}) does not "
              f"reproduce its metrics.json: {shown_diffs}{more}. The model, the data or the software changed "
              "since the run: check that data.root still holds the same images (tailtune data check), that "
              "checkpoint.safetensors is the run's own, and the versions of tailtune and torch.", file=sys.stderr)
        return 1
    return 0


def cmd_zeroshot(args) -> int:
    from tailtune.runs.zeroshot import zeroshot

    cfg = _load(args)
    out = zeroshot(cfg)
    test = out["test"]
    groups = out["data"]["group_names"]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"zero-shot {out['backbone']['name']} ({out['backbone']['pretrained']}) on {out['dataset']}, "
          f"prompt {out['prompt']!r}:")
    print("  ".join(f"{k} {test[k]:.2f}" if test.get(k) is not None else f"{k} -"
                    for k in ["overall", "balanced", *groups, "macro_f1", "worst_class", "harmonic_mean",
                              "geometric_mean"]))
    print(f"tte {test['tte']}: {test['views_per_image']} forward(s) per image")
    return 0


def cmd_compare_recipes(args) -> int:
    from tailtune.report.text import format_comparison
    from tailtune.runs.compare import compare_recipes

    result = compare_recipes(args.recipe, args.data, tuple(args.config), tuple(args.overrides),
                             out_dir=args.out_dir)
    print(format_comparison(result))
    return 0


def cmd_list(args) -> int:
    import tailtune  # noqa: F401  (registers everything)
    from tailtune.config import list_presets, preset_comment
    from tailtune.data.samplers import SAMPLERS
    from tailtune.data.sources.base import SOURCES
    from tailtune.data.transforms import AUGMENTATIONS, TTE_MODES
    from tailtune.losses import LOSSES
    from tailtune.models.backbones.base import PROVIDERS
    from tailtune.models.backbones.packaged import PACKAGED
    from tailtune.models.heads import HEAD_INITS, HEADS
    from tailtune.models.peft.base import PEFT_METHODS
    from tailtune.models.prompts import PROMPT_MODES
    from tailtune.models.text import TEXT_METHODS
    from tailtune.runtime.trackers import TRACKERS

    registries = {"peft": PEFT_METHODS, "losses": LOSSES, "heads": HEADS, "inits": HEAD_INITS,
                  "prompts": PROMPT_MODES, "samplers": SAMPLERS, "augmentations": AUGMENTATIONS, "tte": TTE_MODES,
                  "datasets": SOURCES, "models": PROVIDERS, "text": TEXT_METHODS, "trackers": TRACKERS}
    if args.what == "recipes":  # with the published accuracy each should reach
        from tailtune.config.recipes import recipe_listing, recipe_table

        print(recipe_table() if args.markdown else recipe_listing(), end="")
        return 0
    if args.what == "data":
        for name in list_presets("data"):
            print(f"{name:24s} {preset_comment('data', name)}")
        return 0
    if args.counts or args.classes:
        if args.what != "peft":
            raise ConfigError(f"--counts and --classes apply to `tailtune list peft`, not to "
                              f"`tailtune list {args.what}`.")
        from tailtune.models.counts import BENCHMARK_CLASSES, counts_table

        print(counts_table(classes=_class_counts(args.classes) if args.classes else tuple(BENCHMARK_CLASSES)), end="")
        return 0
    reg = registries[args.what]
    for name in reg.names():
        print(f"{name:24s} {reg.help(name)}")
    if args.what == "models":
        print(f"\npackaged (offline) models: {', '.join(PACKAGED)}; open_clip and timm list their own "
              "(open_clip.list_models(), timm.list_models()).")
    return 0


def _class_counts(text: str) -> tuple[int, ...]:
    """``--classes 100,1000``: positive class counts."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(f"--classes {text!r} must be positive class counts separated by commas, e.g. 100,1000.")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailtune", description="Long-tailed recognition with foundation models and lightweight fine-tuning.")
    parser.add_argument("--version", action="version", version=f"tailtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate one run (default recipe: the offline demo)")
    _config_args(p, DEFAULT_RECIPE)
    p.add_argument("--run-dir", default=None, help="run folder (default: output_dir/name)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue an interrupted run from its folder, exactly where it stopped (its config.yaml "
                        "must still say what it trained with)")
    p.add_argument("--extend-epochs", type=int, default=None, metavar="N",
                   help="with --resume: train N epochs more than planned, the learning-rate schedule restarted "
                        "from train.lr over them (recorded as train.extra_epochs)")
    p.add_argument("--from", dest="from_run", metavar="RUN_DIR", default=None,
                   help="with -r crt or -r lws: retrain the classifier on the frozen trained backbone of this "
                        "finished run (Kang et al.'s decoupled baselines); its data, model, peft and head are taken")
    p.add_argument("--break-lock", action="store_true",
                   help="take over the run folder's lock (run.lock) of a process on another host that no longer "
                        "runs (a process of this host that runs is refused even then)")
    p.add_argument("--dry-run", action="store_true",
                   help="print steps, trainable parameters and the estimated time per epoch from a few timed steps; "
                        "train nothing, write nothing")
    p.add_argument("--dry-run-steps", type=int, default=2, metavar="N", help="micro-batches timed by --dry-run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a finished run from its folder")
    p.add_argument("run_dir")
    p.add_argument("--tte", default=None, help="test-time ensemble, `tailtune list tte` (default: the run's)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--precision", choices=C.EVAL_PRECISIONS, default=None,
                   help="eval.precision for this evaluation (default: the run's own)")
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda | cuda:N for this evaluation (default: the run's train.device)")
    p.add_argument("--calibrate", choices=C.CALIBRATIONS, default="none",
                   help="temperature: fit temperature scaling on the run's validation split and show the test "
                        "ECE / NLL / Brier after it; recorded as metrics.json \"calibration\" (eval.calibrate "
                        "does it at the end of training)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--posthoc", default=None, metavar="la|taunorm", help=POSTHOC_HELP)
    p.add_argument("--tau", default=None, help=TAU_HELP)
    p.add_argument("--recompute-logits", action="store_true",
                   help="with --posthoc or --calibrate: run the model over test (and val) even when the run's "
                        "logits.safetensors matches its checkpoint (by default they are read from it)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("zeroshot", help="CLIP zero-shot evaluation with class-name prompts")
    _config_args(p, "lift")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("compare-recipes",
                       help="classifier-only vs lightweight vs full fine-tuning, same budget, one table")
    _config_args(p, DEFAULT_RECIPE)
    p.add_argument("--out-dir", default=None, help="folder of the runs (default: output_dir/compare_<time>)")
    p.set_defaults(func=cmd_compare_recipes)

    p = sub.add_parser("list", help="list registered components and presets")
    p.add_argument("what", choices=["models", "peft", "text", "losses", "heads", "inits", "prompts", "samplers",
                                    "augmentations", "tte", "datasets", "trackers", "recipes", "data"])
    p.add_argument("--markdown", action="store_true", help="recipes: the README's table (Markdown)")
    p.add_argument("--counts", action="store_true",
                   help="peft: each method's trainable parameters on CLIP ViT-B/16 (built without weights) for "
                        "C = 100, 365, 1000, 8142, with the head's and the share of the backbone")
    p.add_argument("--classes", default=None, metavar="C[,C...]",
                   help="peft --counts: these class counts instead (implies --counts)")
    p.set_defaults(func=cmd_list)
    add_data_parser(sub)
    add_results_parsers(sub)
    add_sweep_parser(sub)
    return parser


def _tune_process() -> None:
    """Without CUDA, keep glibc's large buffers in its heap (engine.tune_cpu_allocator): process-wide,
    so the CLI, which owns its process, asks for it; the library leaves its caller's process alone
    (a run on the CPU asks for it too)."""
    import torch

    from tailtune.runtime.device import tune_cpu_allocator

    if not torch.cuda.is_available():
        tune_cpu_allocator()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`train -r lift --run-dir X train.epochs=2`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from tailtune.runtime.logs import console
    from tailtune.training.trainer import TrainingInterrupted

    if args.command in COMPUTE_COMMANDS:
        _tune_process()
    try:
        with console():  # the library's messages on this command's stdout, as plain lines
            return args.func(args)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except TailtuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        log = getattr(e, "tailtune_log", None)  # a run wrote the traceback into its log.txt
        if log is None:
            raise
        print(f"error: unexpected {type(e).__name__}: {e}. This is a bug in tailtune (please report it); "
              f"the traceback is in {log}.", file=sys.stderr)
        return 1
