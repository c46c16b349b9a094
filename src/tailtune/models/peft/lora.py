"""LoRA: low-rank updates of frozen linear layers (attention q and v, or the MLP's two layers)."""

from __future__ import annotations

import math

import torch
from torch import nn

from tailtune.errors import ConfigError
from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, device_of, resolve_r, select_blocks
from tailtune.models.peft.targets import LayerWrapper, check_parts, get_part, innermost, set_part


def reference_down_init(d_in: int, r: int) -> torch.Tensor:
    """The down-projection's initial (r, d_in) weight, drawn as the reference draws its A.

    The reference holds A as a (d_in, r) tensor (x @ A) and fills it with
    ``kaiming_uniform_(a=sqrt(5))``, whose fan-in is then r: uniform in +-1/sqrt(r), std
    1/sqrt(3r) (0.289 at r = 4) (reference: models/peft_modules.py:LoRA, lines 81-89). The same
    draw is made here and transposed into nn.Linear's layout, so from the same RNG state the
    values equal the reference's. HF peft differs: it draws A as an (r, d_in) nn.Linear weight,
    fan-in d_in, bound 1/sqrt(d_in) (std 0.021 at d_in = 768), about 14x weaker at r = 4.
    """
    a = torch.empty(d_in, r)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    return a.t().contiguous()


class LowRank(nn.Module):
    """x -> up(down(x)) / r. ``down`` starts as the reference's A (:func:`reference_down_init`),
    ``up`` at zero, so the update is zero at init. The global RNG is drawn once, for ``down``."""

    def __init__(self, d_in: int, d_out: int, r: int):
        super().__init__()
        # On the meta device nn.Linear's own initialisation draws nothing; the weights are set below.
        self.down = nn.Linear(d_in, r, bias=False, device="meta")
        self.up = nn.Linear(r, d_out, bias=False, device="meta")
        self.down.weight = nn.Parameter(reference_down_init(d_in, r))
        self.up.weight = nn.Parameter(torch.zeros(d_out, r))
        self.scaling = 1.0 / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.scaling


class LoRALinear(LayerWrapper):
    """A frozen linear layer plus low-rank updates of some of ``chunks`` equal slices of its output.

    ``slots`` maps a name to a slice index: for a fused qkv layer, ``{"q": 0, "v": 2}`` of 3.
    The update reads the layer's own input, so on attention it sees the LayerNorm-ed stream.
    """

    def __init__(self, base: nn.Module, r: int, slots: dict[str, int], chunks: int = 1):
        super().__init__(base)
        linear = innermost(base)
        self.chunks = chunks
        self.slots = dict(slots)
        width = linear.out_features // chunks
        self.lora = nn.ModuleDict({name: LowRank(linear.in_features, width, r) for name in slots})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.active:
            return out
        if self.chunks == 1:
            return out + sum(m(x) for m in self.lora.values())
        parts = list(out.chunk(self.chunks, dim=-1))
        for name, index in self.slots.items():
            parts[index] = parts[index] + self.lora[name](x)
        return torch.cat(parts, dim=-1)


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its linear layer (W[slice] += up @ down / r) and unwrap it."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, layer in found:
        if not isinstance(layer.base, nn.Linear):
            raise ConfigError(f"cannot merge LoRA at {name}: it wraps {type(layer.base).__name__}, another "
                              "method's layer, so the update does not fold into a weight. Export with --no-merge.")
        weight = layer.base.weight
        width = weight.shape[0] // layer.chunks
        for slot, index in layer.slots.items():
            lr = layer.lora[slot]
            delta = (lr.up.weight.float() @ lr.down.weight.float()) * lr.scaling
            rows = slice(index * width, (index + 1) * width) if layer.chunks > 1 else slice(None)
            weight[rows] += delta.to(weight.dtype)
        set_part(model, name, layer.base)
    return len(found)


class _LoRA(PeftMethod):
    kinds = ("vit",)
    stage = 2
    merge = staticmethod(merge_lora)  # lora + lora_mlp: one pass merges both
    # part -> (slot name -> output slice, number of slices)
    targets: dict[str, tuple[dict[str, int], int]] = {}

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        for _, block in select_blocks(backbone, cfg):
            check_parts(block, list(self.targets), name)

    def apply(self, backbone, cfg, num_classes):
        r = resolve_r(backbone, cfg, num_classes)
        for _, block in select_blocks(backbone, cfg):
            device = device_of(block)
            for part, (slots, chunks) in self.targets.items():
                path, layer = get_part(block, part, self.name)
                set_part(block, path, LoRALinear(layer, r, slots, chunks).to(device))


@PEFT_METHODS.register("lora")
class LoRA(_LoRA):
    """Low-rank (rank r, scaling 1/r) updates of the attention query and value projections."""

    targets = {"qkv": ({"q": 0, "v": 2}, 3)}


@PEFT_METHODS.register("lora_mlp")
class LoRAMLP(_LoRA):
    """Low-rank (rank r, scaling 1/r) updates of the two MLP linear layers."""

    targets = {"fc1": ({"all": 0}, 1), "fc2": ({"all": 0}, 1)}
