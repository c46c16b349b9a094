"""Parity with the reference implementation (shijxcs/LIFT, commit 661ead9).

tests/parity/ holds the reference code's outputs on a seeded random CLIP ViT-B/16 (its
README.md says how they were made): adapters and head as safetensors, the logits of the
classifier-only and AdaptFormer models, one training step and the eight losses. These tests
go through the code paths of a user's run: the reproduction recipes, `build` with the
backbone read from a local OpenAI-format checkpoint file (model.quick_gelu left at auto),
the reference tensors renamed to tailtune's names and loaded by tailtune's strict checkpoint
loading, evaluation through `predict_logits`, and one step of tailtune's Trainer (its SGD,
schedule and loss from `build_loss`). Everything is compared in fp32, set explicitly: on a
CPU with native bf16, train.precision=auto would pick bf16.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tailtune import config as C
from tailtune.config import LossConfig, load_config
from tailtune.experiment import build
from tailtune.losses import build_loss
from tailtune.runtime.checkpoint import load_checkpoint, save_checkpoint
from tailtune.runtime.loader import predict_logits
from tailtune.training.trainer import Trainer

PARITY = Path(__file__).parent / "parity"
GOLDEN = json.loads((PARITY / "lift_golden.json").read_text())
NUM_CLASSES = GOLDEN["num_classes"]
LOGIT_ATOL = 1e-4  # the reference reproduces its own logits across CPUs within about 1e-5
LOSS_ATOL = 1e-5

# Reference name -> tailtune name of each AdaptFormer tensor (block i of the image encoder).
ADAPTER_NAMES = {"scale": "scale", "ln.weight": "norm.weight", "ln.bias": "norm.bias",
                 "down_proj.weight": "down.weight", "down_proj.bias": "down.bias",
                 "up_proj.weight": "up.weight", "up_proj.bias": "up.bias"}


def tailtune_name(ref: str) -> str:
    if ref == "head.weight":
        return ref
    _, _, i, rest = ref.split(".", 3)  # tuner.adaptformer_list.<i>.<rest>
    return f"backbone.clip.visual.transformer.resblocks.{i}.mlp.adapter.{ADAPTER_NAMES[rest]}"


def cifar100_ir100_counts() -> list[int]:
    """CIFAR-100-LT at imbalance 100: class c has int(500 * 0.01 ** (c / 99)) training images."""
    return [int(500 * 0.01 ** (c / 99)) for c in range(NUM_CLASSES)]


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    """The reference's backbone as a user's local OpenAI-format checkpoint: fp16 tensors (the
    reference loads OpenAI's fp16 weights and calls .float()) with OpenAI's metadata entries."""
    import open_clip

    with torch.random.fork_rng():  # the seeding the reference's README states, without moving the caller's RNG
        torch.manual_seed(0)
        clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    state = {k: v.half() for k, v in clip.state_dict().items()}
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(49408))
    path = tmp_path_factory.mktemp("weights") / "ViT-B-16.pt"
    torch.save(state, path)
    return path


def _config(recipe: str, backbone_file: Path, tmp_path: Path) -> C.Config:
    overrides = [f"model.pretrained={backbone_file}", "train.precision=fp32", "train.device=cpu",
                 # The images come from the golden input; the data only supplies 100 classes.
                 "data.name=synthetic", f"data.synthetic.num_classes={NUM_CLASSES}", "data.synthetic.train_per_class=1",
                 "data.synthetic.test_per_class=1", "data.imb_ratio=1", "data.group_imb_ratio=null", "data.synthetic.image_size=8",
                 "data.root=null",  # the recipe's CIFAR folder: the synthetic source reads no files (and refuses one)
                 "data.num_workers=0", "data.val=none", "quiet=true", f"output_dir={tmp_path}"]
    if "precision" in {f.name for f in dataclasses.fields(C.EvalConfig)}:
        overrides.append("eval.precision=fp32")  # evaluation's own precision key, where it exists
    return load_config(recipe, overrides=overrides)


def _load_reference(exp, safetensors_file: Path, tmp_path: Path) -> None:
    """The reference's tensors under tailtune's names, through tailtune's (strict) checkpoint loading."""
    tensors = {tailtune_name(k): v for k, v in load_file(safetensors_file).items()}
    path = tmp_path / f"{safetensors_file.stem}.tailtune.safetensors"
    save_checkpoint(path, tensors, C.to_yaml(exp.cfg), exp.backbone.info, exp.data.classnames)
    load_checkpoint(path, exp.model, exp.backbone.info, exp.data.classnames)


@pytest.fixture(scope="module")
def golden_input() -> torch.Tensor:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.randn(2, 3, 224, 224)


@pytest.fixture(scope="module")
def adaptformer(backbone_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adaptformer")
    exp = build(_config("lift_cifar100_ir100", backbone_file, tmp))
    _load_reference(exp, PARITY / "lift_adaptformer_tuner_head.safetensors", tmp)
    return exp


@pytest.fixture(scope="module")
def classifier_only(backbone_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classifier_only")
    exp = build(_config("classifier_only", backbone_file, tmp))
    _load_reference(exp, PARITY / "lift_classifier_only_head.safetensors", tmp)
    return exp


def _eval_logits(exp, x: torch.Tensor) -> torch.Tensor:
    exp.model.eval()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)),
                                         batch_size=len(x))
    return predict_logits(exp.model, loader, exp.device, exp.dtype)[0]


def test_the_backbone_is_read_as_the_reference_reads_it(adaptformer):
    """fp32 evaluation, QuickGELU chosen by model.quick_gelu=auto from the file's OpenAI entries."""
    assert adaptformer.dtype is None  # fp32: no autocast
    assert any("QuickGELU (the file looks like an OpenAI CLIP checkpoint" in n for n in adaptformer.notes)
    assert adaptformer.cfg.model.quick_gelu == "auto"


@pytest.mark.parametrize("which", ["classifier_only", "adaptformer"])
def test_logits_match_the_reference(which, request, golden_input):
    exp = request.getfixturevalue(which)
    logits = _eval_logits(exp, golden_input)
    expected = torch.tensor(GOLDEN[which]["logits"])
    assert logits.shape == expected.shape == (2, NUM_CLASSES)
    assert (logits - expected).abs().max() < LOGIT_ATOL


def test_one_training_step_matches_the_reference(adaptformer, golden_input, tmp_path):
    """One step of tailtune's Trainer: LA loss with the CIFAR-100-LT IR100 prior, SGD lr 0.01,
    momentum 0.9, weight decay 5e-4 over adapters and head, the model in train mode (the
    Trainer's; open_clip's ViT-B-16 has no dropout or BatchNorm, so train and eval mode compute
    the same, as in the reference)."""
    ref = GOLDEN["adaptformer"]["one_step"]
    exp = adaptformer
    cfg = dataclasses.replace(exp.cfg.train, batch_size=2, epochs=1)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, exp.cfg.loss.name, exp.cfg.loss.la.tau) == (0.01, 0.9, 5e-4, "la", 1.0)
    labels = torch.tensor(ref["labels"])

    class Golden(torch.utils.data.Dataset):
        targets = labels.tolist()

        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return golden_input[i], labels[i]

    loss_fn = build_loss(exp.cfg.loss, cifar100_ir100_counts())
    trainer = Trainer(exp.model, loss_fn, Golden(), cfg, exp.device, exp.dtype, quiet=True)
    norms = {}

    def grad_norms(optimizer, args, kwargs):  # observed as the step starts: the loss's gradients
        head, body = optimizer.param_groups
        for name, group in (("head", head), ("tuner", body)):
            norms[name] = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in group["params"]))

    trainer.optimizer.register_step_pre_hook(grad_norms)
    restore = {k: v.clone() for k, v in exp.model.trainable_state_dict().items()}
    try:
        stats = trainer.train_epoch()
        assert trainer.step == 1 and stats.images == 2
        assert stats.loss == pytest.approx(ref["loss_LA"], abs=LOSS_ATOL)
        assert norms["tuner"] == pytest.approx(ref["grad_norm_tuner"], rel=1e-5)
        assert norms["head"] == pytest.approx(ref["grad_norm_head"], rel=1e-5)
        blocks = exp.model.backbone.clip.visual.transformer.resblocks
        assert float(blocks[0].mlp.adapter.scale.detach()) == pytest.approx(ref["scale_param_after_step_layer0"], abs=1e-6)
        logits = _eval_logits(exp, golden_input)
        weight = exp.model.head.weight.detach()
        for got, want in ((logits, ref["logits_after_step"]), (weight, ref["head_weight_after_step"])):
            assert list(got.shape) == want["shape"]
            assert got.flatten()[:5].tolist() == pytest.approx(want["first5"], abs=LOGIT_ATOL)
            assert int(got[0].argmax()) == want["row0_argmax"]
            # Sums over 200 logits / 76,800 weights: fp32 rounding of each adds up.
            assert float(got.double().sum()) == pytest.approx(want["sum"], abs=LOGIT_ATOL * math.sqrt(got.numel()))
            assert float(got.double().abs().sum()) == pytest.approx(want["abs_sum"], rel=1e-6)
            assert float(got.double().mean()) == pytest.approx(want["mean"], abs=LOGIT_ATOL)
    finally:
        with torch.no_grad():  # the module's model stays as loaded for the other tests
            state = exp.model.state_dict()
            for k, v in restore.items():
                state[k].copy_(v)


# ---------------------------------------------------------------- the eight losses

LOSSES = GOLDEN["losses"]
# Reference loss -> tailtune's loss.name; every constructor parameter the reference used is
# tailtune's default (LA tau 1, LDAM s 25 = loss.ldam.scale and max margin 0.5, CB beta 0.9999,
# focal gamma 2, LADE lambdas 0.1).
LOSS_NAMES = {"CE": "ce", "LA": "la", "LDAM": "ldam", "CB": "cb", "Focal": "focal", "GRW": "grw",
              "LADE": "lade", "BS": "bs"}


def _loss_inputs():
    i = LOSSES["inputs"]
    return torch.tensor(i["logits"]), torch.tensor(i["labels"]), i["cls_num_list"]


@pytest.mark.parametrize("ref_name", [n for n in LOSS_NAMES if n != "CB"])
def test_losses_match_the_reference(ref_name):
    logits, labels, counts = _loss_inputs()
    loss = build_loss(LossConfig(name=LOSS_NAMES[ref_name]), counts)
    assert float(loss(logits, labels)) == pytest.approx(LOSSES["values"][ref_name], abs=LOSS_ATOL)


def test_loss_parameters_match_the_reference():
    _, _, counts = _loss_inputs()
    p = LOSSES["params"]

    def built(name):
        return build_loss(LossConfig(name=name), counts)

    for name, key in (("la", "LA"), ("bs", "BS")):
        assert built(name).log_prior.tolist() == pytest.approx(p[key]["log_cls_num"], abs=1e-6)
    assert (built("ldam").margin / 25.0).tolist() == pytest.approx(p["LDAM"]["m_list"], abs=1e-6)
    assert built("grw").weight.tolist() == pytest.approx(p["GRW"]["per_cls_weights"], rel=1e-6)
    assert built("lade").prior.tolist() == pytest.approx(p["LADE"]["prior"], rel=1e-6)
    assert built("focal").gamma == p["Focal"]["gamma"]


def test_class_balanced_loss_differs_from_the_reference_only_by_its_float32_weights():
    """The one loss outside 1e-5, and why (a documented deviation): the reference computes the
    effective-number weights (1 - beta) / (1 - beta^n) on its float32 class-count tensor
    (reference: utils/losses.py:ClassBalancedLoss), where 1 - 0.9999^n loses about 4 of float32's
    7 digits; tailtune computes them in float64. Same formula, same weighted mean: fed the
    reference's float32 weights, tailtune's weighted cross-entropy gives the reference's value."""
    logits, labels, counts = _loss_inputs()
    beta = 0.9999
    ref_weights = torch.tensor(LOSSES["params"]["CB"]["per_cls_weights"])
    n32 = torch.tensor(counts, dtype=torch.float32)
    w32 = (1.0 - beta) / (1.0 - beta ** n32)
    assert (w32 / w32.mean()).tolist() == pytest.approx(ref_weights.tolist(), rel=1e-6)  # the cause, reproduced
    n64 = torch.tensor(counts, dtype=torch.float64)
    exact = (1.0 - beta) / (1.0 - beta ** n64)
    exact = exact / exact.mean()

    ours = build_loss(LossConfig(name="cb"), counts)
    assert ours.weight.tolist() == pytest.approx(exact.tolist(), rel=1e-6)
    rel = ((ref_weights.double() - exact) / exact).abs().max()
    assert 1e-6 < rel < 1e-3  # the reference's float32 rounding, not another formula
    value = float(ours(logits, labels))
    with_reference_weights = build_loss(LossConfig(name="cb"), counts)
    with_reference_weights.weight.copy_(ref_weights)
    assert float(with_reference_weights(logits, labels)) == pytest.approx(LOSSES["values"]["CB"], abs=1e-6)
    assert value == pytest.approx(LOSSES["values"]["CB"], abs=1e-4)
    assert value != pytest.approx(LOSSES["values"]["CB"], abs=LOSS_ATOL)  # the deviation is real
    assert F.cross_entropy(logits, labels, weight=exact.float()).item() == pytest.approx(value, abs=1e-7)
