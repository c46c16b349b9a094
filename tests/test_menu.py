"""The method's menu end to end: every registry reachable from config and `tailtune list`,
a run with non-default choices everywhere, and zero-shot with the prompt modes."""

import json

import numpy as np
import pytest
import torch

import tailtune
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.data.samplers import SAMPLERS
from tailtune.data.transforms import AUGMENTATIONS, TTE_MODES
from tailtune.errors import ConfigError
from tailtune.losses import LOSSES
from tailtune.models.heads import HEAD_INITS, HEADS
from tailtune.models.prompts import PROMPT_MODES

LISTS = {"losses": LOSSES, "heads": HEADS, "inits": HEAD_INITS, "prompts": PROMPT_MODES,
         "samplers": SAMPLERS, "augmentations": AUGMENTATIONS, "tte": TTE_MODES}


@pytest.mark.parametrize("what", sorted(LISTS))
def test_tailtune_list_shows_every_entry_with_help(what, capsys):
    assert cli.main(["list", what]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == LISTS[what].names()
    assert all(len(ln.split()) > 1 for ln in lines), "every entry has a help line"


def test_tailtune_list_peft_counts_on_clip_vit_b16(capsys):
    """Every image-side method's trainable parameters for the four benchmarks' C (models/counts.py;
    tests/models/test_counts.py checks them against LIFT+'s)."""
    from tailtune.models.peft.base import methods_for

    assert cli.main(["list", "peft", "--counts"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B-16 (12 blocks, width 768" in out
    for c in ("C=100 (CIFAR-100-LT)", "C=365 (Places-LT)", "C=1000 (ImageNet-LT)", "C=8142 (iNaturalist 2018)"):
        assert c in out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}
    assert all(m in rows for m in methods_for("vit"))
    assert rows["adaptformer"][1:3] == ["101,436", "(0.12%)"] and rows["aft"][-2:] == ["6,252,996", "(7.29%)"]
    assert cli.main(["list", "peft", "--classes", "100,1000"]) == 0
    assert "C=365" not in capsys.readouterr().out
    assert cli.main(["list", "losses", "--counts"]) == 2
    assert "apply to `tailtune list peft`" in capsys.readouterr().err
    assert cli.main(["list", "peft", "--classes", "0"]) == 2
    assert "--classes '0' must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("key, reg", [("loss.name", LOSSES), ("head.type", HEADS), ("head.init", HEAD_INITS),
                                      ("head.prompt_mode", PROMPT_MODES), ("train.sampler", SAMPLERS),
                                      ("train.augment", AUGMENTATIONS), ("eval.tte", TTE_MODES)])
def test_every_registry_is_reachable_from_config_and_a_wrong_name_lists_the_valid_ones(key, reg, tiny_overrides):
    for name in reg.names():
        extra = ["head.descriptors=d.json"] if name == "descriptors" else []
        cfg = load_config("lift", overrides=[*tiny_overrides, f"{key}={name}", *extra])
        tailtune.validate(cfg)
    with pytest.raises(ConfigError, match="'nope'") as err:  # at load (eval.tte) or at validation (the rest)
        tailtune.validate(load_config("lift", overrides=[*tiny_overrides, f"{key}=nope"]))
    assert all(name in str(err.value).split("'nope'")[1] for name in reg.names()), str(err.value)


def test_drw_epoch_beyond_training_is_refused(tiny_overrides):
    cfg = load_config("lift", overrides=[*tiny_overrides, "loss.name=ldam", "loss.ldam.drw_epoch=3", "train.epochs=2"])
    with pytest.raises(ConfigError, match="loss.ldam.drw_epoch=3 never starts in train.epochs=2"):
        tailtune.validate(cfg)


def test_trainer_iterates_the_sampler_plan(tiny_overrides):
    cfg = load_config("lift", overrides=[*tiny_overrides, "peft.method=none", "train.sampler=class_aware"])
    exp = tailtune.build(cfg)
    from tailtune.data.base import Transformed
    from tailtune.data.transforms import test_transform
    from tailtune.training.trainer import Trainer

    train_set = Transformed(exp.data.train, test_transform(exp.backbone.preprocess))
    trainer = Trainer(exp.model, torch.nn.CrossEntropyLoss(), train_set, cfg.train, exp.device)
    trainer.epoch = 1
    labels = torch.cat([y for _, y in trainer._epoch_batches()[1]]).numpy()
    plan = trainer.sampler.plan(1)
    assert np.array_equal(labels, np.asarray(exp.data.train.targets)[plan])
    # class-aware: the 6 classes equally often, although the data are imbalanced 8:1
    assert sorted(set(np.bincount(labels).tolist())) in ([len(labels) // 6], [len(labels) // 6, len(labels) // 6 + 1])


def test_run_with_the_rest_of_the_menu(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "name=menu", "peft.method=none", "train.epochs=2",
                 "loss.name=ldam", "loss.ldam.drw_epoch=1", "train.sampler=square_root", "train.augment=minimal",
                 "head.type=layernorm", "head.init=k_shot", "head.k_shot.shots=3",
                 "eval.tte=randaug", "eval.randaug_views=3"]
    metrics = tailtune.fit(load_config("lift", overrides=overrides))
    test = metrics["test"]
    assert metrics["head_init"] == "k_shot" and test["tte"] == "randaug" and test["views_per_image"] == 3
    for key in ("overall", "many", "medium", "few", "macro_f1", "per_class", "worst_class", "harmonic_mean",
                "geometric_mean", "mean_class"):
        assert key in test, key
    assert test["worst_class"] == min(a for a in test["per_class"] if a is not None)
    saved = json.loads((tmp_path / "runs" / "menu" / "metrics.json").read_text())
    assert saved["test"]["harmonic_mean"] == test["harmonic_mean"]
    # randaug views are seeded by the image: evaluating the run again gives the same numbers
    again = tailtune.evaluate(tmp_path / "runs" / "menu", quiet=True)
    assert again["per_class"] == test["per_class"]
    tencrop = tailtune.evaluate(tmp_path / "runs" / "menu", tte="tencrop", quiet=True)
    assert tencrop["views_per_image"] == 10
    assert "worst" in (tmp_path / "runs" / "menu" / "log.txt").read_text()


@pytest.mark.parametrize("mode", ["classname", "ensemble"])
def test_zeroshot_prompt_modes(mode, tiny_overrides):
    out = tailtune.zeroshot(load_config("lift", overrides=[*tiny_overrides, f"head.prompt_mode={mode}", "eval.tte=none"]))
    assert out["prompt_mode"] == mode and out["prompt"] == mode
    assert out["test"]["num_samples"] == 24 and out["test"]["views_per_image"] == 1
    assert {"worst_class", "harmonic_mean", "geometric_mean", "macro_f1"} <= set(out["test"])


def test_zeroshot_ensemble_is_the_mean_of_normalised_template_embeddings(tiny_cfg):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from tailtune.models.backbones.base import build_backbone
    from tailtune.models.prompts import class_text_features, ensemble_prompts

    torch.manual_seed(0)
    backbone = build_backbone(tiny_cfg.model)
    got = class_text_features(backbone.text_embeddings, ensemble_prompts(["sea_lion"], tiny_cfg.head))
    each = backbone.text_embeddings([t("sea lion") for t in OPENAI_IMAGENET_TEMPLATES])
    assert each.shape[0] == 80
    mean = (each / each.norm(dim=1, keepdim=True)).mean(0)
    assert torch.allclose(got[0], mean / mean.norm(), atol=1e-5)


def test_cli_zeroshot_with_descriptors(tiny_overrides, tmp_path, capsys):
    desc = tmp_path / "d.json"
    desc.write_text(json.dumps({f"class_{i}": ["a shape", "a colour"] for i in range(6)}))
    from tailtune.data.sources.base import build_data

    names = build_data(load_config("lift", overrides=tiny_overrides).data).classnames
    desc.write_text(json.dumps({n: ["a shape", "a colour"] for n in names}))
    assert cli.main(["zeroshot", *tiny_overrides, "head.prompt_mode=descriptors", f"head.descriptors={desc}",
                     "eval.tte=none"]) == 0
    out = capsys.readouterr().out
    assert "descriptors from" in out and "overall" in out


def test_text_init_on_a_vision_only_backbone_fails_at_start_up(tiny_overrides):
    cfg = load_config("lift", overrides=[*tiny_overrides, "model.provider=timm", "model.name=test_vit",
                                         "head.init=text", "peft.method=none"])
    with pytest.raises(ConfigError, match="head.init=text needs a backbone with a text tower; 'test_vit'"):
        tailtune.build(cfg)
