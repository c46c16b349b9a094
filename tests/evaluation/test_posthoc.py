"""Post-hoc adjustment without retraining: logit adjustment and tau-normalisation (issue 17, point 1)."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tailtune
from conftest import TINY_CLIP
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.errors import ConfigError
from tailtune.evaluation import posthoc as P
from tailtune.evaluation.evaluate import split_logits
from tailtune.evaluation.metrics import probability_metrics
from tailtune.experiment import load_run

COUNTS = [100, 10, 1]  # many, medium, few (3 classes)


def test_logit_adjustment_moves_the_argmax_to_the_tail_class_by_hand():
    z = torch.tensor([[3.0, 1.5, 1.0]])
    lp = P.log_prior(COUNTS)
    assert lp == pytest.approx([math.log(100 / 111), math.log(10 / 111), math.log(1 / 111)])
    # z - tau log p: class 2 gains tau ln 111, class 0 only tau ln 1.11; class 2 passes class 0 at
    # tau = 2 / ln 100 = 0.434 (and class 1 at 0.5 / ln 10 = 0.217, before class 1 passes class 0 at 0.651).
    at4 = P.adjust_logits(z, lp, 0.4)[0]
    at5 = P.adjust_logits(z, lp, 0.5)[0]
    assert at4.tolist() == pytest.approx([3 + 0.4 * math.log(1.11), 1.5 + 0.4 * math.log(11.1), 1 + 0.4 * math.log(111)])
    assert at5.tolist() == pytest.approx([3.05218, 2.70346, 3.35477], abs=1e-4)
    assert int(z.argmax()) == 0 and int(at4.argmax()) == 0 and int(at5.argmax()) == 2
    assert torch.equal(P.adjust_logits(z, lp, 0.0), z)


def test_tau_normalisation_moves_the_argmax_to_the_small_norm_class_by_hand():
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.3, 0.4]])  # norms 2, 1, 0.5
    x = torch.tensor([[1.0, 1.8]])
    z = x @ w.t()  # the trained head's logits [2, 1.8, 1.02]: taunorm works from them alone
    assert P.taunorm_logits(z, w, None, 0.0)[0].tolist() == pytest.approx([2.0, 1.8, 1.02])
    assert P.taunorm_logits(z, w, None, 0.5)[0].tolist() == pytest.approx([2 / 2 ** 0.5, 1.8, 1.02 / 0.5 ** 0.5])
    assert P.taunorm_logits(z, w, None, 1.0)[0].tolist() == pytest.approx([1.0, 1.8, 2.04])
    assert [int(P.taunorm_logits(z, w, None, t).argmax()) for t in (0.0, 0.5, 1.0)] == [0, 1, 2]
    b = torch.tensor([0.5, 0.0, -0.5])  # the bias is kept as trained
    assert P.taunorm_logits(z + b, w, b, 1.0)[0].tolist() == pytest.approx([1.5, 1.8, 1.54])
    assert P.tau_normalise(torch.zeros(1, 2), 1.0).tolist() == [[0.0, 0.0]]  # a zero row stays zero


def test_summary_agrees_with_scikit_learn():
    from sklearn.metrics import log_loss, top_k_accuracy_score

    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(40, 7)) * 2)
    labels = rng.integers(0, 7, 40)
    groups, names = [0, 0, 1, 1, 2, 2, 2], ["many", "medium", "few"]
    s = P.summary(logits, labels, groups, names, 7)
    probs = torch.softmax(logits, 1).numpy()
    assert s["top5"] == pytest.approx(100 * top_k_accuracy_score(labels, probs, k=5, labels=range(7)))
    assert s["nll"] == pytest.approx(log_loss(labels, probs, labels=range(7)))
    assert s["overall"] == pytest.approx(100 * np.mean(probs.argmax(1) == labels))
    assert set(s) == {"overall", "balanced", "many", "medium", "few", "top5", "ece", "nll"}


def test_ece_by_hand():
    # 15 bins: confidences 0.9 (bin 14 of (13/15, 1]) twice, one right; 0.5 (bin 7) once, right.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])
    labels = np.array([0, 1, 0])
    got = probability_metrics(labels, [0, 0], ["many", "medium", "few"], 2, probs=probs)["ece"]
    assert got == pytest.approx(100 * (2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1 - 0.5)))


def _fake_exp(val_labels, test_labels):
    data = SimpleNamespace(val=object(), train_counts=np.array(COUNTS), groups=[0, 1, 2],
                           group_names=["many", "medium", "few"], num_classes=3)
    cfg = SimpleNamespace(head=SimpleNamespace(type="cosine"), eval=SimpleNamespace(tte="none"))
    return SimpleNamespace(cfg=cfg, data=data, model=SimpleNamespace(head=None)), {"val": val_labels,
                                                                                  "test": test_labels}


def test_auto_tau_is_chosen_on_val_not_on_test(monkeypatch):
    # The same logits on both splits; val's images are of the tail class (best from tau 0.5 up,
    # where class 2 wins), test's of the head class (best below tau 0.434): auto follows val.
    exp, labels = _fake_exp(np.array([2, 2]), np.array([0, 0]))
    asked = []

    class Source:  # evaluation.logits.RunLogits' part posthoc_results uses
        def get(self, split, tte):
            asked.append(split)
            return np.array([[3.0, 1.5, 1.0]] * 2, dtype=np.float32), labels[split], 1

    r = P.posthoc_results(exp, "la", ["auto", 0.0], logits=Source())
    assert asked == ["val", "test"]
    assert r["rows"][0] == {"tau": 0.5, "tau_from": "val", "after": r["rows"][0]["after"]}
    assert r["rows"][0]["after"]["overall"] == 0.0 and r["rows"][1]["after"]["overall"] == 100.0  # test preferred 0
    assert dict(r["val"])[0.4] == 0.0 and dict(r["val"])[0.5] == 100.0 and r["grid"] == list(P.GRIDS["la"])
    # Given taus never read the validation split.
    asked.clear()
    P.posthoc_results(exp, "la", [1.0], logits=Source())
    assert asked == ["test"]


def test_choose_tau_takes_the_smallest_on_a_tie():
    assert P.choose_tau([1.0, 0.0, 0.5], lambda t: 50.0 if t else 40.0) == (0.5, [(0.0, 40.0), (0.5, 50.0), (1.0, 50.0)])


def test_taunorm_is_refused_for_heads_that_normalise_their_weights():
    for head in ("cosine", "l2", "layernorm", "text", "text_features"):
        with pytest.raises(ConfigError, match=rf"head.type={head}, which normalises them.*--posthoc la"):
            P.check_taunorm(head)
    P.check_taunorm("linear")


# ---------------------------------------------------------------- on trained runs

# Cross-entropy on a long-tailed set (127 ... 3 images), a randomly initialised linear head trained
# briefly at a high rate: the head classes are favoured, as CE does; a held-out val split.
CE_RUN = [*TINY_CLIP, "loss.name=ce", "head.type=linear", "head.init=random", "peft.method=none", "train.lr=0.3",
          "train.epochs=2", "data.val=holdout", "data.synthetic.train_per_class=128", "data.imb_ratio=32"]


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("posthoc")
    tailtune.fit(load_config("lift", overrides=[*CE_RUN, f"output_dir={out}", "name=ce", "eval.report=false"]))
    return out / "ce"


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    """The default cosine head, no validation split."""
    out = tmp_path_factory.mktemp("posthoc_cos")
    tailtune.fit(load_config("lift", overrides=[*TINY_CLIP, "eval.tte=none", f"output_dir={out}", "name=cos",
                                                "eval.report=false"]))
    return out / "cos"


def test_logit_adjustment_of_a_ce_run_moves_predictions_to_the_tail(ce_run):
    exp = load_run(ce_run)
    logits = torch.from_numpy(split_logits(exp, exp.cfg.eval.tte, "test")[0])
    lp = torch.as_tensor(P.log_prior(exp.data.train_counts))
    before = logits.argmax(1)
    after = P.adjust_logits(logits, lp.numpy(), 1.0).argmax(1)
    # An image's prediction only moves to a class of smaller prior, and some do.
    assert (lp[after] <= lp[before]).all() and (after != before).any()
    r = P.posthoc_results(exp, "la", [1.0])
    assert r["before"]["few"] < r["rows"][0]["after"]["few"]


def test_taunorm_from_logits_equals_the_model_with_rescaled_weights(ce_run):
    exp = load_run(ce_run)
    tte = exp.cfg.eval.tte  # fivecrop: the mean over the views commutes with the rescaling
    logits = torch.from_numpy(split_logits(exp, tte, "test")[0])
    head = exp.model.head
    assert torch.equal(P.taunorm_logits(logits, head.weight, head.bias, 0.0), logits)
    trained = head.weight.detach().clone()
    with torch.no_grad():
        head.weight.copy_(P.tau_normalise(head.weight, 0.7))
    again = torch.from_numpy(split_logits(exp, tte, "test")[0])
    assert not torch.allclose(again, logits, atol=1e-2)
    assert torch.allclose(P.taunorm_logits(logits, trained, head.bias, 0.7), again, atol=1e-4)


def test_eval_posthoc_prints_and_records_then_the_plain_eval_still_reproduces(ce_run, capsys):
    saved = json.loads((ce_run / "metrics.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(ce_run), "--posthoc", "la", "--tau", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "post-hoc logit adjustment (la) on the test split" in out and "before" in out and "change" in out
    assert f"recorded in {ce_run / 'metrics.json'}" in out
    entries = json.loads((ce_run / "metrics.json").read_text())["posthoc"]
    assert [(e["method"], e["tau"], e["tau_from"], e["split"]) for e in entries] == [("la", 1.0, "given", "test")]
    for k in ("overall", "balanced", "many", "medium", "few"):
        assert entries[0]["before"][k] == pytest.approx(saved["test"][k])  # the run's own test numbers
    assert set(entries[0]["after"]) == {"overall", "balanced", "many", "medium", "few", "top5", "ece", "nll"}
    # auto replaces la's entry; taunorm adds its own
    assert cli.main(["eval", str(ce_run), "--posthoc", "la,taunorm", "--tau", "auto", "-q"]) == 0
    out = capsys.readouterr().out
    assert "chosen on the validation split" in out
    entries = json.loads((ce_run / "metrics.json").read_text())["posthoc"]
    assert [(e["method"], e["tau_from"]) for e in entries] == [("la", "val"), ("taunorm", "val")]
    assert not (ce_run / "run.lock").exists()
    # several taus: a table, nothing recorded
    assert cli.main(["eval", str(ce_run), "--posthoc", "la", "--tau", "0,0.5,1,auto", "-q"]) == 0
    out = capsys.readouterr().out
    assert "not recorded in metrics.json (several taus" in out and out.count("after") == 4
    assert json.loads((ce_run / "metrics.json").read_text())["posthoc"] == entries
    # the plain eval's reproduction check ignores the posthoc entries
    assert cli.main(["eval", str(ce_run), "-q"]) == 0
    assert "matches metrics.json" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--posthoc", "la", "--tau", "auto"], r"--tau auto chooses tau on the validation split.*has none.*data.val=holdout"),
    (["--posthoc", "la"], r"--tau auto chooses tau on the validation split"),  # auto is the default
    (["--posthoc", "taunorm", "--tau", "1"], r"head.type=cosine, which normalises them"),
    (["--posthoc", "lws"], r"--posthoc 'lws': choose la or taunorm"),
    (["--posthoc", "la", "--tau", "-1"], r"--tau '-1': give auto, a number >= 0"),
    (["--posthoc", "la", "--tau", "1", "--split", "val"], r"--posthoc reports on the test split"),
    (["--tau", "1"], r"--tau goes with --posthoc"),
], ids=["auto-no-val", "default-auto", "taunorm-cosine", "method", "tau", "split", "tau-alone"])
def test_posthoc_refusals(cosine_run, capsys, args, match):
    before = (cosine_run / "metrics.json").read_text()
    assert cli.main(["eval", str(cosine_run), "-q", *args]) == 2
    import re

    assert re.search(match, capsys.readouterr().err)
    assert (cosine_run / "metrics.json").read_text() == before


def test_la_on_the_cosine_run_with_a_given_tau(cosine_run, capsys):
    assert cli.main(["eval", str(cosine_run), "--posthoc", "la", "--tau", "0", "-q", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    assert r["rows"][0]["after"] == r["before"]  # tau 0 is no adjustment


def test_sweep_takes_posthoc_axes_as_evaluation_only_axes():
    # Issue 17 point 6: tailtune sweep sweeps posthoc and tau (it used to refuse them and point to
    # `tailtune eval RUN --posthoc la,taunorm --tau 0,0.5,1,auto`); tests/runs/test_sweep.py runs one.
    from tailtune.runs.sweep import parse_arguments

    axes, fixed = parse_arguments(["posthoc=la,taunorm", "posthoc.tau=0,1", "posthoc=la"])
    assert [(a.key, a.values, a.posthoc) for a in axes] == [
        ("posthoc", ("la", "taunorm"), True), ("posthoc.tau", ("0", "1"), True), ("posthoc", ("la",), True)]
    assert fixed == []
    with pytest.raises(ConfigError, match=r"posthoc.tau"):
        parse_arguments(["posthoc.tau=0,x"])


# ---------------------------------------------------------------- from the run's stored logits


def _copy(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / run.name)
    return tmp_path / run.name


@pytest.fixture
def forwards(monkeypatch):
    """Model forwards and the (split, tte) the model is run over for post-hoc, counted."""
    from tailtune.evaluation import logits as L
    from tailtune.models.model import TailModel

    seen = {"forwards": 0, "splits": []}
    forward, split_logits_ = TailModel.forward, L.split_logits

    def counted(self, images):
        seen["forwards"] += 1
        return forward(self, images)

    def splits(exp, tte=None, split="test", quiet=True):
        seen["splits"].append((split, tte))
        return split_logits_(exp, tte, split, quiet)

    monkeypatch.setattr(TailModel, "forward", counted)
    monkeypatch.setattr(L, "split_logits", splits)
    return seen


def _posthoc(run, capsys, *more):
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--posthoc", "la,taunorm", "--tau", "auto", "-q", *more]) == 0
    out = capsys.readouterr().out
    return json.loads((run / "metrics.json").read_text())["posthoc"], out


def test_the_run_keeps_the_logits_posthoc_and_calibration_need(ce_run):
    from tailtune.evaluation.logits import read_logits
    from tailtune.report.record import load_predictions
    from tailtune.runtime.checkpoint import stored_sha256

    sha, entries = read_logits(ce_run / "logits.safetensors")
    assert sha == stored_sha256(ce_run / "checkpoint.safetensors", "checkpoint")
    saved = json.loads((ce_run / "metrics.json").read_text())
    n_test, n_val = saved["data"]["test_images"], saved["data"]["val_images"]
    assert {k: v.logits.shape for k, v in entries.items()} == {
        ("test", "fivecrop"): (n_test, 6), ("test", "none"): (n_test, 6), ("val", "fivecrop"): (n_val, 6)}
    assert [(entries[k].views, entries[k].precision) for k in sorted(entries)] == [(5, "fp32"), (1, "fp32"), (5, "fp32")]
    labels, preds = load_predictions(ce_run / "predictions.npz")
    for tte in ("fivecrop", "none"):
        assert np.array_equal(entries[("test", tte)].labels, labels)
        assert np.array_equal(entries[("test", tte)].logits.argmax(1), preds[tte])
    # the very logits the run's metrics came from, and the model's now
    z = entries[("test", "fivecrop")].logits
    again = probability_metrics(labels, load_run(ce_run).data.groups, saved["data"]["group_names"], 6,
                                logits=z.astype(np.float64))
    assert (again["ece"], again["nll"]) == (saved["test"]["ece"], saved["test"]["nll"])
    exp = load_run(ce_run)
    assert np.array_equal(split_logits(exp, "fivecrop", "test")[0], z)
    assert np.array_equal(split_logits(exp, "fivecrop", "val")[0], entries[("val", "fivecrop")].logits)


def test_posthoc_from_stored_logits_runs_no_forward_and_equals_the_recomputed(ce_run, tmp_path, capsys, forwards):
    run = _copy(ce_run, tmp_path)
    stored, out = _posthoc(run, capsys)
    assert forwards == {"forwards": 0, "splits": []}
    assert f"logits: read from {run / 'logits.safetensors'} (val fivecrop, test fivecrop): no model forward" in out
    recomputed, out = _posthoc(run, capsys, "--recompute-logits")
    assert "logits: computed by the model (val fivecrop, test fivecrop): asked to recompute them" in out
    assert forwards["splits"] == [("val", "fivecrop"), ("test", "fivecrop")]  # once each for both methods
    assert forwards["forwards"] == 2  # one batch each
    assert [e["method"] for e in stored] == ["la", "taunorm"]
    assert recomputed == stored  # the same numbers in metrics.json's "posthoc"


def test_a_stale_or_edited_logits_file_is_never_used(ce_run, tmp_path, capsys, forwards):
    from tailtune.evaluation.logits import read_logits, save_logits

    run = _copy(ce_run, tmp_path)
    truth, _ = _posthoc(run, capsys, "--recompute-logits")
    _, entries = read_logits(run / "logits.safetensors")
    # another checkpoint's logits (zeros: they would give other numbers)
    for e in entries.values():
        e.logits = np.zeros_like(e.logits)
    save_logits(run / "logits.safetensors", list(entries.values()), "0" * 64)
    forwards["splits"].clear()
    got, out = _posthoc(run, capsys)
    assert "logits: computed by the model (val fivecrop, test fivecrop): " in out
    assert "was written for another checkpoint (sha256 000000000000..." in out and "a stale file, not used" in out
    assert forwards["splits"] == [("val", "fivecrop"), ("test", "fivecrop")] and got == truth
    # edited after it was written: the checksum tells
    original = (ce_run / "logits.safetensors").read_bytes()
    data = bytearray(original)
    data[-7] ^= 0x40
    (run / "logits.safetensors").write_bytes(bytes(data))
    forwards["splits"].clear()
    got, out = _posthoc(run, capsys)
    assert "damaged or edited: its contents do not match the sha256 checksum" in out
    assert forwards["splits"] == [("val", "fivecrop"), ("test", "fivecrop")] and got == truth
    # --json: the line goes to stderr, stdout keeps the JSON alone
    (run / "logits.safetensors").write_bytes(original)
    assert cli.main(["eval", str(run), "--posthoc", "la", "--tau", "1", "-q", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["method"] == "la" and "logits: read from" in captured.err
