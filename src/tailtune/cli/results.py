"""``tailtune report | compare | predict | export | config-reference``: parsing and printing only;
the work is in report.py, predict.py, export.py and reference.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tailtune import config as C


def cmd_report(args) -> int:
    from tailtune.errors import WriteError
    from tailtune.report.html import write_report
    from tailtune.runtime.rundir import LOCK, RunLock, check_run

    folder = check_run(args.run_dir, finished=False)  # write_report says what a run needs; no lock in a non-run
    with RunLock.take(folder, way_out=f"delete {folder / LOCK}"):  # not while a run writes the folder
        try:
            print(f"report: {write_report(args.run_dir)}")
        except WriteError as e:
            raise WriteError(f"{e} The run's results are untouched; make room, then run `tailtune report "
                             f"{args.run_dir}` again.", e.path) from e
    return 0


def cmd_compare(args) -> int:
    from tailtune.errors import WriteError
    from tailtune.report.compare import compare_runs

    try:
        print(f"comparison: {compare_runs(args.run_dirs, args.out)}")
    except WriteError as e:
        raise WriteError(f"{e} The runs are untouched; make room (or choose another --out), then run "
                         "the same `tailtune compare` again.", e.path) from e
    return 0


def format_predictions(preds) -> str:
    """One block per image: its path, then rank, probability and class name."""
    lines = []
    for p in preds:
        lines.append(p.source)
        lines += [f"  {i + 1}. {prob * 100:6.2f}%  {name}" for i, (name, prob) in enumerate(zip(p.names, p.probs))]
    return "\n".join(lines)


def check_options(device: str | None, precision: str | None, run_device: str = "auto") -> None:
    """A command's --device and --precision, checked against this machine before anything loads
    (the errors then name the options, not the config keys they set). ``run_device``: the
    device used without --device (a run's train.device; checked later, with the run's name)."""
    from tailtune.errors import ConfigError
    from tailtune.runtime.device import resolve_device
    from tailtune.runtime.precision import resolve_precision

    if device is not None:
        where = resolve_device(device, key="--device")
    else:
        try:
            where = resolve_device(run_device)
        except ConfigError:
            return  # the run's own device: its error names the run (experiment.inference_config)
    if precision not in (None, "train"):
        resolve_precision(precision, where, key="--precision")


PREDICT_EXIT_CODES = ("exit codes: 0 every image predicted; 1 some files could not be read (the others are "
                      "predicted, every unreadable file is named on stderr: the count and the first ten); "
                      "2 nothing predicted (a bad model folder, option or image list, or no file readable).")


def cmd_predict(args) -> int:
    import sys

    from tailtune.inference.predict import load, unreadable_message

    check_options(args.device, args.precision)
    predictor = load(args.model, device=args.device, precision=args.precision)
    preds = predictor.predict(args.images, top_k=args.top_k, tte=args.tte, quiet=args.quiet or args.json,
                              skip_unreadable=True)
    bad = [p.error for p in preds if p.error is not None]
    print(json.dumps([p.as_dict() for p in preds], indent=2) if args.json
          else format_predictions([p for p in preds if p.error is None]))
    if bad:
        print(f"error: {unreadable_message(bad, len(preds))} The other images are predicted above; "
              "replace or remove the unreadable files.", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    from tailtune.inference.export import export_run

    s = export_run(args.run_dir, args.out, merge=not args.no_merge, onnx=args.onnx, overwrite=args.overwrite)
    merged = f"; merged into the weights: {', '.join(s['merged'])}" if s["merged"] else ""
    print(f"exported {s['parameters']:,} parameters ({s['tensors']} tensors) to {s['weights']} + {s['config']}"
          f"{merged}; reloaded and checked (max logit difference {s['max_logit_difference']:.2g})")
    onnx = s["onnx"]
    if onnx is not None:
        print(f"ONNX: {onnx['path']}" + (f" (onnxruntime max logit difference {onnx['max_logit_difference']:.2g})"
                                         if onnx.get("checked") else "")
              if onnx["written"] else f"ONNX: not written ({onnx['reason']})")
    return 0


def cmd_config_reference(args) -> int:
    from tailtune.config.reference import config_reference

    text = config_reference()
    if args.out:
        from tailtune.runtime.files import write_text, writing

        with writing(Path(args.out).parent):
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def add_results_parsers(sub) -> None:
    """Add the report, compare, predict, export and config-reference commands."""
    p = sub.add_parser("report", help="write report.html (+ PNGs) of a finished run into its folder")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="several finished runs side by side: table, group bars, per-class curves")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", "-o", default=None, help="folder of the comparison report (default: ./compare_<time>)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="top-k classes of images with a run folder or an export",
                       description="Top-k classes of images with a run folder or an export folder.",
                       epilog=PREDICT_EXIT_CODES)
    p.add_argument("model", metavar="RUN_OR_EXPORT_DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", "-k", type=int, default=5)
    p.add_argument("--tte", default=None, help="test-time ensemble, `tailtune list tte` (default: the run's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=C.EVAL_PRECISIONS, default=None,
                   help="eval.precision for these predictions (default: the run's own)")
    p.add_argument("--json", action="store_true",
                   help="print the predictions as JSON (an unreadable file: {\"image\", \"error\"})")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="a run as one safetensors file + config.json, loadable without the run")
    p.add_argument("run_dir")
    p.add_argument("out", help="export folder (created): it receives model.safetensors, config.json and, "
                              "with the onnx package, model.onnx; a name ending in .safetensors, .onnx or "
                              ".json is refused")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA and aft modules instead of folding them into the weights")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="also write model.onnx (default: when the onnx package is installed)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty export folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("config-reference", help="the Markdown reference of every config key (docs/CONFIG.md)")
    p.add_argument("--out", "-o", default=None, help="write to this file instead of printing")
    p.set_defaults(func=cmd_config_reference)
