"""Which config keys change what a run computes: the one list ``--resume`` consults.

A resumed run continues from its saved training state; its folder's ``config.yaml`` may have been
edited since. A change of a key listed in :data:`HARMLESS_ON_RESUME` (console, logging, loader
workers, where the run's files go) is taken; a change of any other key, a key added later
included, would make the record (config.yaml, report.html) say something the run did not do, so
``--resume`` refuses it (runs/run.py). tests/test_bad_inputs.py checks that every key of the
schema is classified here.
"""

from __future__ import annotations

from typing import Any

from tailtune.config.load import to_dict

# key -> why changing it mid-run leaves every number of the run as it is
HARMLESS_ON_RESUME: dict[str, str] = {
    "quiet": "console output only (log.txt keeps every line)",
    "overwrite": "read when a run folder is created, not when it is resumed",
    "output_dir": "where run folders go; a resume is given its folder",
    "name": "the run folder's name; a resume is given its folder",
    "data.num_workers": "loader processes; every image's augmentation is seeded per image, not per worker",
    "train.log_every": "how often a step is logged and written to TensorBoard",
    "train.save_every": "how often the training state is saved",
    "eval.report": "whether report.html is written at the end",
    "eval.save_logits": "whether logits.safetensors is written at the end after training (no number of the run changes)",
    "model.cache_dir": "where downloaded weights are kept (the weights themselves are checked by name)",
}

EXTENSION_KEY = "train.extra_epochs"  # set only by --extend-epochs on a resume (runs/run.py)


def flat(cfg: Any) -> dict[str, Any]:
    """Every leaf of a config as ``{"section.key": value}`` (options sub-sections included)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(to_dict(cfg), "")
    return out


def changes_result(key: str) -> bool:
    """Would changing ``key`` mid-run change what the run computes? True for every key not listed
    in :data:`HARMLESS_ON_RESUME` (a new key counts as changing the result until it is listed)."""
    return key not in HARMLESS_ON_RESUME


def config_changes(old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` of every key whose value differs (a key only one has: None)."""
    a, b = flat(old), flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
