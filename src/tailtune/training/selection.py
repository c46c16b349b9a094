"""Validation and model selection: the validation split judges the epochs, never the test set.

The validation split is the dataset's own (ImageNet-LT, Places-LT, a val/ folder or
split=val rows) or a balanced slice held out of the training images (``data.val``).
With ``train.select_by_val`` the trainable tensors of the epoch with the best
validation accuracy are kept; ties go to the earlier epoch. Validation uses no test-time
ensemble (one view), so selecting costs one plain pass over the split per epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from tailtune.errors import ConfigError

_log = logging.getLogger(__name__)
NONE = "none"
VAL_TTE = "none"


class Selector:
    """Tracks validation accuracy over epochs and restores the best epoch's tensors."""

    def __init__(self, model, data, select: bool, evaluate: Callable[[], dict], log: Callable[[str], None] = _log.info):
        if select and data.val is None:
            raise ConfigError("train.select_by_val=true needs a validation split and this dataset has none "
                              "(data.val=none, or a benchmark without one); set data.val=holdout to hold one "
                              "out of the training images, or train.select_by_val=false.")
        self.model = model
        self.used = data.val_source or NONE
        self.select = select
        self.evaluate = evaluate
        self.log = log
        self.per_epoch: list[float] = []
        self.best_epoch: int | None = None
        self._best: dict[str, torch.Tensor] | None = None

    def after_epoch(self, epoch: int) -> float | None:
        """Validation accuracy after ``epoch`` (1-based) when selecting; keeps the best tensors."""
        if not self.select:
            return None
        acc = self.evaluate()["overall"]
        self.per_epoch.append(acc)
        if self.best_epoch is None or acc > max(self.per_epoch[:-1]):
            self.best_epoch = epoch
            self._best = {k: v.detach().clone() for k, v in self.model.trainable_state_dict().items()}
        self.log(f"epoch {epoch}: val accuracy {acc:.2f} (best {max(self.per_epoch):.2f}, epoch {self.best_epoch})")
        return acc

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able, tensors) to carry the selection across a resume."""
        return {"per_epoch": self.per_epoch, "best_epoch": self.best_epoch}, dict(self._best or {})

    def load_state(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.per_epoch = list(meta["per_epoch"])
        self.best_epoch = meta["best_epoch"]
        self._best = dict(tensors) or None

    @torch.no_grad()
    def finish(self) -> dict:
        """Restore the selected epoch (if selecting) and report validation and what was used."""
        if self.select and self._best is not None:
            current = self.model.state_dict()  # references to the live tensors: copy_ writes into the model
            for name, tensor in self._best.items():
                current[name].copy_(tensor)
            self.log(f"model selection: kept epoch {self.best_epoch} of {len(self.per_epoch)} "
                     f"(best val accuracy {max(self.per_epoch):.2f}); the test set was not used.")
        val = self.evaluate() if self.used != NONE else None
        return {
            "selection": self.used,
            "val": val,
            "model_selection": {
                "by_val_accuracy": self.select,
                "best_epoch": self.best_epoch,
                "val_overall_per_epoch": self.per_epoch,
                "test_used_for_selection": False,
            },
        }


