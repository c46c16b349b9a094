"""The text side (models/text.py): the text encoder as the classifier, text-side PEFT, CoOp.

Facts from LIFT-plus (github shijxcs/LIFT-plus, commit ea555ea): the logits of ``classifier None``
are exp(logit_scale) * cos(image @ image_proj, text @ text_proj) (models/models.py PEFT_Model.forward);
CoOp's templates and context positions come from trainer.py build_tuner and the context indices
from models/models.py PEFT_Text._get_context_indices; the recipe from configs/method/coop.yaml.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import tailtune
from tailtune.config import load_config
from tailtune.errors import ConfigError
from tailtune.experiment import build, load_run, param_summary
from tailtune.inference.export import export_run, load_export
from tailtune.models.peft.base import peft_off
from tailtune.models.text import (
    OWN_METHODS,
    SHARED_METHODS,
    TEXT_METHODS,
    TextClassifier,
    TextPeftOptions,
    context_indices,
    coop_layout,
    fixed_text_head,
)
from tailtune.runs.estimate import dry_run


def _cfg(*extra, out="/tmp/tt_text_tests"):
    from conftest import TINY_CLIP

    return load_config("lift", overrides=[*TINY_CLIP, "train.precision=fp32", "eval.precision=fp32",
                                          f"output_dir={out}", "head.type=text", *extra])


def test_logits_are_clip_zero_shot_logits():
    exp = build(_cfg("peft.method=none"))
    bb, x = exp.backbone, torch.randn(3, 3, 32, 32)
    prompts = [f"a photo of a {c.replace('_', ' ')}." for c in exp.data.classnames]
    with torch.no_grad():
        want = bb.zeroshot_logits(x, F.normalize(bb.text_embeddings(prompts), dim=-1))
        got = exp.model.eval()(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_head_scale_option_replaces_clip_logit_scale():
    a = build(_cfg("peft.method=none")).model.eval()
    b = build(_cfg("peft.method=none", "head.text.scale=7.0")).model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ratio = b(x) / a(x)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 7.0 / a.backbone.clip.logit_scale.exp().item()))


def test_text_features_cached_until_a_text_tensor_changes(monkeypatch):
    exp = build(_cfg())  # adaptformer on the image side, nothing on the text side
    head, calls = exp.model.head, []
    real = TextClassifier._encode
    monkeypatch.setattr(TextClassifier, "_encode", lambda self: calls.append(1) or real(self))
    x = torch.randn(2, 3, 32, 32)
    exp.model.train()
    exp.model(x).sum().backward()
    exp.model(x)
    exp.model.eval()
    with torch.no_grad():
        exp.model(x)
    assert len(calls) == 1  # once for training steps and evaluation alike
    with torch.no_grad():
        exp.backbone.clip.ln_final.weight.mul_(2.0)  # e.g. a loaded checkpoint
        exp.model(x)
    assert len(calls) == 2
    assert head._cache is not None


def test_text_side_training_runs_the_encoder_every_step(monkeypatch):
    exp = build(_cfg("peft.text.method=coop"))
    calls = []
    real = TextClassifier._encode
    monkeypatch.setattr(TextClassifier, "_encode", lambda self: calls.append(1) or real(self))
    exp.model.train()
    for _ in range(2):
        exp.model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert len(calls) == 2


@pytest.mark.parametrize("method", [n for n in TEXT_METHODS.names() if n != "none"])
def test_each_text_method_trains_composes_with_the_image_side(method):
    exp = build(_cfg("peft.method=adaptformer", f"peft.text.method={method}"))
    text = [(n, p) for n, p in exp.backbone.named_parameters() if p.requires_grad and not n.startswith("clip.visual")]
    assert text, method
    counts = param_summary(exp.model)
    assert counts["trainable_text"] == sum(p.numel() for _, p in text)
    assert counts["trainable_total"] == counts["trainable_backbone"] + counts["trainable_text"]
    exp.model.train()
    loss = F.cross_entropy(exp.model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in text), method


def test_methods_mirror_the_image_side():
    assert set(SHARED_METHODS) | set(OWN_METHODS) | {"none"} == set(TEXT_METHODS.names())


def test_text_proj_tuning_trains_the_text_projection_only():
    exp = build(_cfg("peft.method=proj_tuning", "peft.text.method=proj_tuning"))
    trained = {n for n, p in exp.backbone.named_parameters() if p.requires_grad}
    assert trained == {"clip.text_projection", "clip.visual.proj"}  # LIFT+'s proj_tuning: both projections


def test_text_prompts_sit_after_the_start_token_and_leave_before_pooling():
    exp = build(_cfg("peft.method=none", "peft.text.method=vpt_deep", "peft.text.prompt_length=3"))
    clip = exp.backbone.clip
    blocks = clip.transformer.resblocks
    assert all(b.vpt.tokens.shape == (3, 64) for b in blocks)
    head = exp.model.head.eval()
    with torch.no_grad():
        on = head._encode()
        with peft_off(exp.model):
            off = head._encode()
    assert on.shape == off.shape and not torch.allclose(on, off)
    plain = build(_cfg("peft.method=none")).model.head.eval()
    with torch.no_grad():
        torch.testing.assert_close(off, plain._encode())


def test_coop_layouts_match_lift_plus():
    lay = lambda **kw: coop_layout(TextPeftOptions(**kw))  # noqa: E731
    assert lay() == ("X X X X {}.", [0, 1, 2, 3])
    assert lay(class_position="front") == ("{} X X X X.", [-5, -4, -3, -2])
    assert lay(class_position="middle") == ("X X {} X X.", [0, 1, -3, -2])
    assert lay(context_init="photo") == ("a photo of a {}.", [0, 1, 2, 3, -1])
    # [sot, t1 .. t5, eot]: -1 is the last text token, 0 the first
    tokens = torch.tensor([[49406, 10, 11, 12, 13, 14, 49407, 0]])
    assert context_indices(tokens, torch.tensor([0, 1, -2, -1])).tolist() == [[1, 2, 4, 5]]


def test_coop_photo_init_is_the_embeddings_of_the_template():
    exp = build(_cfg("peft.method=none", "peft.text.method=coop", "peft.text.context_init=photo"))
    emb = exp.backbone.clip.token_embedding
    tokens = exp.backbone.tokenizer(["a photo of a X."])[0]
    ids = [tokens[i].item() for i in (1, 2, 3, 4, 6)]  # a photo of a . (X at 5)
    torch.testing.assert_close(emb.ctx, emb.base.weight[ids])
    exp2 = build(_cfg("peft.method=none", "peft.text.method=coop"))
    assert exp2.model.head.tokens.shape[0] == exp2.data.num_classes
    assert exp2.backbone.coop_template == "X X X X {}."


@pytest.mark.parametrize("extra, match", [
    (["head.type=cosine", "peft.text.method=lora"], "head.type=text"),
    (["peft.text.method=loar"], "Did you mean"),
    (["peft.text.method=coop", "head.prompt_mode=ensemble"], "coop"),
    (["peft.text.method=vpt_shallow+vpt_deep"], "choose one"),
    (["head.init=class_mean"], "head.init"),
    (["peft.text.context_init=photo", "peft.text.context_length=8"], "photo"),
    (["peft.text.method=lora", "peft.text.blocks=last 5"], "peft.text.blocks"),
    (["head.type=text_features"], "export form"),
])
def test_bad_text_configs_are_refused(extra, match):
    with pytest.raises(ConfigError, match=match):
        build(_cfg(*extra))


def test_fixed_head_gives_the_same_logits():
    exp = build(_cfg("peft.text.method=lora+coop"))
    x = torch.randn(3, 3, 32, 32)
    exp.model.eval()
    with torch.no_grad():
        want = exp.model(x)
        got = fixed_text_head(exp.model.head)(exp.backbone(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fit_checkpoint_and_export_round_trip(tmp_path):
    cfg = _cfg("peft.method=adaptformer", "peft.text.method=coop+lora", "peft.lr=0.5", "train.lr=0.5", "name=r",
               out=str(tmp_path))
    metrics = tailtune.fit(cfg)
    assert metrics["params"]["trainable_text"] > 0
    run = tmp_path / "r"
    text = f"text side (coop+lora): {metrics['params']['trainable_text']:,} trainable parameters"
    assert text in (run / "report.html").read_text()
    assert f", text side {metrics['params']['trainable_text']:,}, head 0" in (run / "log.txt").read_text()
    exp = load_run(run)
    saved = exp.model.trainable_state_dict()
    assert any(k.endswith("token_embedding.ctx") for k in saved)
    assert not any(k.startswith("head.") for k in saved)  # the text head has no tensors of its own
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = exp.model.eval()(x)
    summary = export_run(run, tmp_path / "export", onnx=False)
    loaded, meta = load_export(tmp_path / "export", device="cpu", precision="fp32")
    assert meta["config"]["head"]["type"] == "text_features"
    assert not any("clip.transformer" in k or "token_embedding" in k for k in load_file(summary["weights"]))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), ref, rtol=1e-4, atol=1e-4)


def test_dry_run_names_the_text_encoder_cost():
    result = dry_run(_cfg("peft.text.method=coop"), timed_steps=1)
    text = result.summary["text_encoder"]
    assert text["prompts"] == 6 and text["tokens"] == 6 * 77 and text["every_step"]
    assert any("text classifier: 6 prompts x 77 tokens" in line and "every micro-batch" in line
               for line in result.lines)
    cached = dry_run(_cfg(), timed_steps=1)
    assert any("once, then cached" in line for line in cached.lines)


def test_coop_recipe_is_lift_plus():
    cfg = load_config("coop")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (50, 32, 0.002)
    assert cfg.head.type == "text" and cfg.peft.method == "none" and cfg.peft.text.method == "coop"
    assert (cfg.peft.text.context_length, cfg.peft.text.context_init, cfg.peft.text.class_position) == (4, "random", "end")


@pytest.mark.parametrize("backbone", [["peft.method=proj_tuning"],
                                      ["model.name=TT-Tiny-RN", "peft.method=ssf_pool"]],
                         ids=["vit_proj_tuning", "clip_resnet"])
def test_features_already_in_the_joint_space_are_not_projected_again(backbone):
    """Under proj_tuning (a ViT) and on a CLIP ResNet the features are joint-space embeddings
    already: the text classifier's logits are CLIP's zero-shot logits, projected once."""
    exp = build(_cfg(*backbone))
    bb, x = exp.backbone, torch.randn(3, 3, 32, 32)
    prompts = [f"a photo of a {c.replace('_', ' ')}." for c in exp.data.classnames]
    with torch.no_grad(), peft_off(exp.model):
        image = F.normalize(bb.clip.encode_image(x).float(), dim=-1)
        text = F.normalize(bb.clip.encode_text(bb.tokenizer(prompts)).float(), dim=-1)
        want = bb.clip.logit_scale.exp().float() * image @ text.t()
        torch.testing.assert_close(bb.zeroshot_logits(x, text), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(exp.model.eval()(x), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fixed_text_head(exp.model.head)(bb(x)), want, rtol=1e-4, atol=1e-4)


def test_proj_tuning_on_a_clip_resnet_is_refused():
    with pytest.raises(ConfigError, match=r"peft.method='proj_tuning' applies to vit backbones, but open_clip "
                                         r"model 'TT-Tiny-RN' is a cnn .* Methods that apply to a cnn: .*ssf_pool"):
        build(_cfg("model.name=TT-Tiny-RN", "peft.method=proj_tuning", "head.type=cosine"))
