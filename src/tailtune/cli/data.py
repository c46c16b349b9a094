"""``tailtune data ...``: split lists, class-count profile, start-up checks. Parsing only; the work is in data/."""

from __future__ import annotations

import argparse
import json
import re

SOURCE_HELP = ("a data preset (`tailtune list data`), a YAML file, or a source name (`tailtune list datasets`), "
               "followed by key=value overrides, e.g. places_lt data.root=/data/places365")


def cmd_fetch_splits(args) -> int:
    from tailtune.data.fetch import fetch_splits

    fetch_splits(args.name, args.root, offline=args.offline)
    print(f"the split lists of {args.name} are in {args.root}")
    return 0


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=DIR")
    p.add_argument("--config", "-c", action="append", default=[], help="YAML file merged on top (repeatable)")


def cmd_stats(args) -> int:
    from tailtune.data.stats import data_config, dataset_stats, format_profile

    cfg = data_config(args.source, args.overrides, args.config)
    plot = args.plot or f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', cfg.data.name)}_class_counts.png"
    prof, saved = dataset_stats(cfg, None if args.no_plot else plot, check_files=args.check_files)
    if args.json:
        print(json.dumps(prof, indent=2))
        return 0
    print(format_profile(cfg.data.name, prof))
    for note in prof["notes"]:
        print(f"note: {note}")
    if saved:
        print(f"plot of the sorted class counts: {saved}")
    return 0


def cmd_check(args) -> int:
    from tailtune.data.sources.base import build_data
    from tailtune.data.stats import data_config

    cfg = data_config(args.source, args.overrides, args.config)
    data = build_data(cfg.data)
    sizes = ", ".join(f"{k} {len(v):,}" for k, v in data.splits().items())
    decoded = "present and decodable" if cfg.data.verify_images else "present (not decoded: data.verify_images=false)"
    print(f"{cfg.data.name}: {data.num_classes} classes; {sizes} images; every listed file {decoded}; "
          "labels in range; every class has training images.")
    for note in data.notes:
        print(f"note: {note}")
    return 0


def add_data_parser(sub) -> None:
    """Add the ``data`` command group to the main parser's sub-commands."""
    p = sub.add_parser("data", help="datasets: fetch split lists, class-count statistics, start-up checks")
    dsub = p.add_subparsers(dest="data_command", required=True)

    q = dsub.add_parser("fetch-splits", help="download and verify a benchmark's split lists (or say where they go)")
    q.add_argument("name", help="imagenet_lt, places_lt or inat2018")
    q.add_argument("--root", required=True, help="folder for the lists (the data preset's data.splits_dir / data.root)")
    q.add_argument("--offline", action="store_true", help="do not download; verify and say what is missing")
    q.set_defaults(func=cmd_fetch_splits)

    q = dsub.add_parser("stats", help="class-count profile (head/tail, imbalance, many/medium/few) and a plot")
    _source_args(q)
    q.add_argument("--plot", default=None, help="PNG path of the sorted-counts plot (default: NAME_class_counts.png)")
    q.add_argument("--no-plot", action="store_true", help="print only")
    q.add_argument("--check-files", action="store_true", help="also run the start-up checks of the image files")
    q.add_argument("--json", action="store_true", help="print the profile as JSON")
    q.set_defaults(func=cmd_stats)

    q = dsub.add_parser("check", help="the start-up checks alone: files present and decodable, labels, names")
    _source_args(q)
    q.set_defaults(func=cmd_check)

    from tailtune.cli.store import add_cache_parser  # the preprocessed image store (data/store.py)

    add_cache_parser(dsub)
