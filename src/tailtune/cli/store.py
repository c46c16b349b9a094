"""``tailtune data cache SOURCE --out DIR``: the preprocessed image store. Parsing only; the work is in data/store.py."""

from __future__ import annotations

import os

STORE_HELP = ("a data preset (`tailtune list data`), a YAML file, or a source name (`tailtune list datasets`), "
              "followed by key=value overrides, e.g. imagenet_lt data.root=/data/imagenet")


def cmd_cache(args) -> int:
    from tailtune.data.sources.base import build_data
    from tailtune.data.stats import data_config
    from tailtune.data.store import check_store_folder, write_store

    cfg = data_config(args.source, args.overrides, args.config)
    out = os.path.abspath(args.out)  # the hint below must work from any folder
    check_store_folder(cfg.data, out)
    data = build_data(cfg.data)
    workers = args.workers if args.workers >= 0 else (os.cpu_count() or 1)
    interpolation = args.interpolation or ("bicubic" if cfg.data.interpolation == "auto" else cfg.data.interpolation)
    meta = write_store(data, cfg.data, out, args.short_side, interpolation, workers, quiet=args.quiet)
    sizes = ", ".join(f"{k} {v['images']:,} images ({v['bytes'] / 2**30:.2f} GiB)" for k, v in meta["splits"].items())
    print(f"image store of {cfg.data.name} in {out}: {sizes}; short side {args.short_side} px, {interpolation}.")
    overrides = " ".join(args.overrides)
    print(f"train from it with: tailtune train ... {overrides + ' ' if overrides else ''}data.store={out}")
    return 0


def add_cache_parser(dsub) -> None:
    """Add ``cache`` to the ``tailtune data`` sub-commands."""
    q = dsub.add_parser("cache", help="decode and resize a dataset's images once into a memory-mapped uint8 store "
                                      "(later runs: data.store=DIR, no JPEG decoding)")
    q.add_argument("source", help=STORE_HELP)
    q.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=DIR")
    q.add_argument("--config", "-c", action="append", default=[], help="YAML file merged on top (repeatable)")
    q.add_argument("--out", "-o", required=True, help="folder of the store (created)")
    q.add_argument("--short-side", type=int, default=256,
                   help="resize the short side down to this many pixels, never up (default 256: the test view's "
                        "resize at 224 px, int(224 * 8 / 7); use int(resolution * 8 / 7) for other resolutions)")
    q.add_argument("--interpolation", default=None, choices=["bicubic", "bilinear", "nearest", "lanczos"],
                   help="resize filter (default: data.interpolation if set, else bicubic, as CLIP and most timm "
                        "models); use the filter the runs resize with, or they note the difference")
    q.add_argument("--workers", type=int, default=-1, help="decoding processes (default: one per core)")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_cache)

