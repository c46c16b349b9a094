"""benchmarks/gpu_check.py without a GPU: its refusal, its arguments, the CUDA-vs-CPU agreement check
(run CPU against CPU), and the real-run step's CLI calls (run on a CPU device with a tiny model)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import model_rate  # noqa: E402

from tailtune.cli.app import main as cli  # noqa: E402

TINY = ("model.name=TT-Tiny-ViT", "model.resolution=32")


def test_refuses_at_once_without_cuda(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "cuda_present", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "figs")]) == gpu_check.NO_CUDA
    assert "no CUDA device here" in capsys.readouterr().err
    assert not (tmp_path / "figs").exists()  # nothing written, nothing run


def test_help_and_unknown_steps(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--help"])
    assert e.value.code == 0 and "installs nothing" in capsys.readouterr().out.lower()
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--only", "agree,bogus"])
    assert e.value.code == 2 and "unknown step(s) bogus" in capsys.readouterr().err


def test_benchmark_calls_carry_cuda_batch_128_and_json(tmp_path):
    """Each call's options are the scripts' own (their --help lists them): eval.py's --batch is
    its --precisions batch, the rows' batch sizes are --batches."""
    import subprocess
    import sys

    planned = gpu_check.steps(tmp_path, 4)
    for name, flag in (("train_step", "--batches"), ("eval", "--batches"), ("data", "--batch")):
        argv = planned[name][0][1]
        assert argv[argv.index("--device") + 1] == "cuda" and argv[argv.index(flag) + 1] == "128"
        assert "--json" in argv
        script = gpu_check.HERE / argv[1]
        usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                               check=True).stdout
        for option in (a for a in argv[2:] if a.startswith("--")):
            assert f"{option} " in usage or f"{option}\n" in usage or f"[{option}" in usage, (name, option)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_agreement_check_on_cpu_against_cpu(precision):
    out = model_rate.agreement(torch.device("cpu"), precision, "open_clip", "TT-Tiny-ViT", "adaptformer",
                               batch=4, resolution=32)
    assert out["ok"] and out["top1_agreement"] == 1.0
    assert (out["max_abs_diff"] == 0.0) == (precision == "fp32")
    assert out["relative"] < model_rate.BF16_TOLERANCE


def test_agreement_check_catches_a_disagreeing_device(monkeypatch):
    """The 'device' forward (the one under autocast) runs with other head weights: refused."""
    built = []
    real = model_rate.build_model
    monkeypatch.setattr(model_rate, "build_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])

    @contextlib.contextmanager
    def other_head(device, dtype):
        head = next(p for n, p in built[-1].named_parameters() if n.startswith("head."))
        with torch.no_grad():
            head.copy_(torch.randn_like(head))
        yield

    monkeypatch.setattr(model_rate, "autocast", other_head)
    out = model_rate.agreement(torch.device("cpu"), "fp32", "open_clip", "TT-Tiny-ViT", "adaptformer", 8, 32)
    assert not out["ok"] and out["relative"] > model_rate.BF16_TOLERANCE


def test_the_real_run_step_on_a_cpu_device(tmp_path):
    root = gpu_check.synthetic_folder(tmp_path / "jpegs", classes=2, per_class=4, test_per_class=2, size=(48, 40))
    assert len(list((root / "train").rglob("*.jpg"))) == 8
    cmds = gpu_check.run_commands(root, tmp_path, device="cpu", model=TINY, epochs=1, batch=4)
    for name, argv in cmds.items():
        assert argv[1:3] == ["-m", "tailtune.cli"]
        assert cli(argv[3:]) == 0, name
    assert (tmp_path / "store").is_dir()
    assert (tmp_path / "run_store" / "metrics.json").exists() and (tmp_path / "run_gpu_decode" / "metrics.json").exists()
    assert "decoded in batches on cpu" in (tmp_path / "run_gpu_decode" / "log.txt").read_text()


def test_steps_are_bounded_and_summarised(monkeypatch, tmp_path):
    """With CUDA mocked and the steps replaced by stand-ins: one finishes, one outlives its share of
    the budget and is killed; summary.json records both, the exit code says not every step ran."""
    monkeypatch.setattr(gpu_check, "cuda_present", lambda: True)
    monkeypatch.setattr(gpu_check, "cuda_machine", lambda: {"gpu": "mock", "gpu_capability": "9.0", "cores": 2,
                                                            "loader_workers": 1})
    py = sys.executable
    monkeypatch.setattr(gpu_check, "steps", lambda out, workers: {
        "agree": [("agree", [py, "-c", f"open({str(out / 'agreement.json')!r}, 'w').write('{{\"ok\": true}}')"])],
        "eval": [("eval", [py, "-c", "import time; time.sleep(30)"])]})
    monkeypatch.setattr(gpu_check, "CAPS", dict(gpu_check.CAPS, agree=20, eval=3))
    rc = gpu_check.main(["--out", str(tmp_path), "--only", "agree,eval", "--budget", "23"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 1 and summary["agreement"] == {"ok": True}
    assert [(r["step"], r["status"]) for r in summary["steps"]] == [("agree", "ok"), ("eval", "timed out")]
    assert summary["steps"][1]["seconds"] < 10
