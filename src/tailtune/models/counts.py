"""Trainable parameters of every image-side PEFT method on a backbone, for a few class counts.

The backbone is built on PyTorch's meta device (``torch.device("meta")``): its tensors have
shapes but no storage, so CLIP ViT-B/16 builds in under a second and takes no memory, and each
method's own ``apply`` runs on it, so the counts are those a run gets (``tailtune list peft
--counts``; a run's ``metrics.json`` ``params`` counts the same way: ``TailModel.param_counts``).
Methods whose choice of entries is random (masked, aft) draw nothing there; their counts follow
from their rules alone. Every method with its defaults: the bottleneck rule
r = 2^max(0, floor(log2(C / 2L))) for adapters and LoRA, aft's ratio C / (L (12d + 9)), ...
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch

from tailtune.config import HeadConfig, ModelConfig, section
from tailtune.models.backbones.base import Backbone, build_backbone
from tailtune.models.heads import build_head
from tailtune.models.peft.base import apply_peft, bottleneck, methods_for

# The benchmarks' class counts (CIFAR-100-LT, Places-LT, ImageNet-LT, iNaturalist 2018).
BENCHMARK_CLASSES: dict[int, str] = {100: "CIFAR-100-LT", 365: "Places-LT", 1000: "ImageNet-LT",
                                     8142: "iNaturalist 2018"}
VIT_B16 = ModelConfig(name="ViT-B-16", pretrained="none")


@dataclass(frozen=True)
class Count:
    """Trainable parameters of one method (or '+'-composition) for one class count."""

    method: str
    num_classes: int
    backbone: int  # trainable parameters inside the image encoder (the PEFT part)
    head: int  # the classifier's
    backbone_total: int  # the image encoder's parameters

    @property
    def total(self) -> int:
        return self.backbone + self.head

    @property
    def share(self) -> float:
        """Trainable share of the backbone (as a run's ``trainable_backbone_share``)."""
        return self.backbone / max(self.backbone_total, 1)


def meta_backbone(model: ModelConfig = VIT_B16) -> Backbone:
    """``model`` with shapes only (no weights, no memory): for counting parameters."""
    with torch.device("meta"):
        return build_backbone(model)


def _copy(backbone: Backbone) -> Backbone:
    """A structural copy sharing the tensors and the tokenizer; requires_grad is reset by the caller."""
    memo = {id(t): t for t in itertools.chain(backbone.parameters(), backbone.buffers())}
    tokenizer = getattr(backbone, "tokenizer", None)
    memo[id(tokenizer)] = tokenizer
    return copy.deepcopy(backbone, memo)


def count(backbone: Backbone, peft: Any, num_classes: int, head: HeadConfig | None = None) -> Count:
    """Trainable parameters of the PEFT section ``peft`` (a ``section("peft", ...)`` or ``PeftConfig``)
    and of the head on a meta ``backbone`` (left as it was)."""
    tuned = _copy(backbone)
    try:
        with torch.device("meta"):
            apply_peft(tuned, peft, num_classes)
            classifier = build_head(head or HeadConfig(), tuned.feature_dim, num_classes)
        trained = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    finally:
        backbone.requires_grad_(False)  # methods that train the backbone's own tensors set them on the shared ones
    return Count(str(peft.method), num_classes, trained, sum(p.numel() for p in classifier.parameters()),
                 backbone.encoder_param_count())


def peft_counts(backbone: Backbone, classes=tuple(BENCHMARK_CLASSES), methods: list[str] | None = None) -> list[Count]:
    """For each method (default: every registered one that applies to the meta ``backbone``) and
    class count, the trainable parameters with the method's default options."""
    names = methods if methods is not None else methods_for(backbone.kind)
    return [count(backbone, section("peft", method=name), c) for name in names for c in classes]


def counts_table(model: ModelConfig = VIT_B16, classes=tuple(BENCHMARK_CLASSES)) -> str:
    """The table `tailtune list peft --counts` prints: per method and C, the trainable backbone
    parameters and their share of the backbone, with the head's count and the bottleneck r."""
    backbone = meta_backbone(model)
    rows = peft_counts(backbone, classes)
    blocks, width = len(backbone.blocks()), backbone.feature_dim
    by = {(r.method, r.num_classes): r for r in rows}
    methods = list(dict.fromkeys(r.method for r in rows))
    heads = {c: by[methods[0], c].head for c in classes}
    total = rows[0].backbone_total
    lines = [f"Trainable parameters on {model.provider} {model.name} ({blocks} blocks, width {width}, image encoder "
             f"{total:,} parameters; built on the meta device, without weights), each method with its defaults.",
             "Each cell: the trainable backbone parameters (their share of the image encoder); the head trains too, "
             "a run's total is both.", ""]
    cols = [f"C={c}" + (f" ({BENCHMARK_CLASSES[c]})" if c in BENCHMARK_CLASSES else "") for c in classes]
    cells = [["method", *cols],
             ["head (cosine, C x width)", *(f"{heads[c]:,}" for c in classes)],
             ["r (bottleneck rule)", *(str(bottleneck(c, blocks)) for c in classes)] if blocks else None]
    for m in methods:
        cells.append([m, *(f"{by[m, c].backbone:,} ({100 * by[m, c].share:.2f}%)" for c in classes)])
    cells = [row for row in cells if row]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip()
              for row in cells]
    other = [f"{m} (head {by[m, classes[0]].head // classes[0]} wide)" for m in methods
             if by[m, classes[0]].head != heads[classes[0]]]
    if other:  # e.g. proj_tuning: the classifier reads the joint-space embeddings
        lines += ["", f"Heads of another width: {', '.join(other)}."]
    return "\n".join(lines) + "\n"
