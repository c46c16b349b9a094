"""The paper's question on your data: classifier-only vs lightweight vs full fine-tuning.

Runs the same recipe once per fine-tuning mode, with the same data, epochs and schedule,
and puts the results in one table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tailtune import config as C
from tailtune.report.compare import compare_runs
from tailtune.runs.run import fit
from tailtune.runtime.files import write_text
from tailtune.runtime.rundir import COMPARISON

# (label, overrides) per mode; "{light}" is the recipe's own lightweight method.
DEFAULT_MODES = (
    ("classifier only", ["peft.method=none"]),
    ("lightweight ({light})", ["peft.method={light}"]),
    ("full fine-tuning", ["peft.method=full", "peft.lr=0.01"]),
)


def compare_recipes(recipe: str | None = "demo", data: str | None = None, files: tuple[str, ...] = (),
                    overrides: tuple[str, ...] = (), modes=DEFAULT_MODES,
                    out_dir: str | Path | None = None) -> dict:
    """Train one run per mode into ``out_dir/<mode>/`` and return the comparison."""
    base = C.load_config(recipe, data, files, overrides)
    light = base.peft.method if base.peft.method not in ("none", "full") else "bn_tuning"
    out = Path(out_dir) if out_dir else Path(base.output_dir) / f"compare_{time.strftime('%Y%m%d-%H%M%S')}"
    rows = []
    for label, extra in modes:
        label = label.format(light=light)
        extra = [e.format(light=light) for e in extra]
        # The user's options of the lightweight method (peft.masked.ratio) do not go to the other modes.
        loose = C.load_config(recipe, data, files, [*overrides, *extra], check_options=False)
        unused = C.unchosen_overrides(loose, overrides)
        cfg = C.load_config(recipe, data, files, [*[o for o in overrides if o not in unused], *extra])
        folder = out / cfg.peft.method.replace("+", "-")
        t0 = time.perf_counter()
        metrics = fit(cfg, folder)
        rows.append({"mode": label, "overrides": extra, "run_dir": str(folder),
                     "test": {k: v for k, v in metrics["test"].items() if k != "per_class"},
                     "params": metrics["params"], "generalisation_gap": metrics.get("generalisation_gap"),
                     "seconds": time.perf_counter() - t0})
    # The side-by-side report (report.html); its comparison.json gets this table's keys too.
    report = compare_runs([r["run_dir"] for r in rows], out)
    result = {"recipe": recipe, "data": data, "overrides": list(overrides),
              "group_names": metrics["data"]["group_names"], "rows": rows, "report": str(report)}
    summary = json.loads((out / COMPARISON).read_text())
    write_text(out / COMPARISON, json.dumps({**summary, **result}, indent=2))
    return result


