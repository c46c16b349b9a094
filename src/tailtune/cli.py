"""Command line: parse, build a config, call the library. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import TailtuneError

DEFAULT_RECIPE = "demo"


def _config_args(p: argparse.ArgumentParser, default_recipe: str | None) -> None:
    p.add_argument("--recipe", "-r", default=default_recipe,
                   help=f"packaged recipe or YAML file (default: {default_recipe}); `tailtune list recipes`")
    p.add_argument("--data", "-d", default=None, help="packaged data preset or YAML file, e.g. cifar100_ir100")
    p.add_argument("--config", "-c", action="append", default=[], help="YAML file merged on top (repeatable)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5 data.root=/data")


def _load(args):
    from .config import load_config

    return load_config(args.recipe, args.data, args.config, args.overrides)


def cmd_train(args) -> int:
    from .api import fit

    cfg = _load(args)
    fit(cfg, args.run_dir)
    return 0


def cmd_eval(args) -> int:
    from .api import evaluate, format_results, read_metrics

    saved = read_metrics(args.run_dir)
    test = evaluate(args.run_dir, args.tte, args.split, quiet=args.quiet)
    if args.json:
        print(json.dumps(test, indent=2))
        return 0
    shown = dict(saved, test=test, dataset=f"{saved['dataset']} ({args.split} split)")
    print(format_results(shown))
    if args.split == "test" and test["tte"] == saved["test"]["tte"]:
        same = abs(test["overall"] - saved["test"]["overall"]) < 1e-6
        print("matches metrics.json" if same else
              f"differs from metrics.json (saved overall {saved['test']['overall']:.4f})")
    return 0


def cmd_zeroshot(args) -> int:
    from .api import zeroshot

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
                    for k in ["overall", *groups, "macro_f1"]))
    return 0


def cmd_compare_recipes(args) -> int:
    from .compare import compare_recipes, format_comparison

    result = compare_recipes(args.recipe, args.data, tuple(args.config), tuple(args.overrides),
                             out_dir=args.out_dir)
    print(format_comparison(result))
    return 0


def cmd_list(args) -> int:
    from . import api  # noqa: F401  (registers everything)
    from .config import list_presets, preset_comment
    from .data.sources import SOURCES
    from .losses import LOSSES
    from .models.backbones import PACKAGED, PROVIDERS
    from .models.heads import HEAD_INITS, HEADS
    from .models.peft import PEFT_METHODS

    registries = {"peft": PEFT_METHODS, "losses": LOSSES, "heads": HEADS, "inits": HEAD_INITS,
                  "datasets": SOURCES, "models": PROVIDERS}
    if args.what in ("recipes", "data"):
        kind = "recipes" if args.what == "recipes" else "data"
        for name in list_presets(kind):
            print(f"{name:24s} {preset_comment(kind, name)}")
        return 0
    reg = registries[args.what]
    for name in reg.names():
        print(f"{name:24s} {reg.help(name)}")
    if args.what == "models":
        print(f"\npackaged (offline) models: {', '.join(PACKAGED)}; open_clip and timm list their own "
              "(open_clip.list_models(), timm.list_models()).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailtune", description="Long-tailed recognition with foundation models and lightweight fine-tuning.")
    parser.add_argument("--version", action="version", version=f"tailtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate one run (default recipe: the offline demo)")
    _config_args(p, DEFAULT_RECIPE)
    p.add_argument("--run-dir", default=None, help="run folder (default: output_dir/name)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a finished run from its folder")
    p.add_argument("run_dir")
    p.add_argument("--tte", choices=["none", "fivecrop"], default=None, help="test-time ensemble (default: the run's)")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
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
    p.add_argument("what", choices=["models", "peft", "losses", "heads", "inits", "datasets", "recipes", "data"])
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TailtuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
