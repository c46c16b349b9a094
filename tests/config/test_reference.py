"""The configuration reference is generated from the schema and committed as docs/CONFIG.md."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tailtune import config as C
from tailtune.cli import app as cli
from tailtune.config.reference import config_reference, field_choices, field_docs
from tailtune.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_committed_reference_matches_the_schema():
    assert DOCS.exists(), "docs/CONFIG.md is missing: run `tailtune config-reference --out docs/CONFIG.md`"
    assert DOCS.read_text() == config_reference(), (
        "docs/CONFIG.md is out of date with src/tailtune/config/schema.py: run `tailtune config-reference --out docs/CONFIG.md`")


def test_reference_has_every_key_with_its_default():
    text = config_reference()

    def keys(cls, prefix):
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
                assert f"`{prefix}{f.name}`:" in text, f"{prefix}{f.name}"
                yield from keys(f.default_factory, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    for key in keys(C.schema(), ""):
        assert f"| `{key}` |" in text, key
    assert "| `train.precision` | str | `auto` |" in text
    assert "| `model.resolution` | int or null | `null` |" in text
    assert "| `peft.vpt.length` | int | `10` |" in text  # a method's options, gathered from its registration


@dataclass
class _Demo:
    a: int = C.setting(1, "first # with a hash")
    b: str = C.setting("x # not a comment", "above b, on two lines", choices=("x # not a comment", "y"))
    c: bool = False


def test_docs_and_choices_are_read_from_the_field_metadata():
    assert field_docs(_Demo) == {"a": "first # with a hash", "b": "above b, on two lines", "c": ""}
    assert field_choices(_Demo) == {"b": ("x # not a comment", "y")}
    assert field_choices(C.TrainConfig)["precision"] == C.PRECISIONS


def test_every_checked_choice_is_in_the_metadata():
    """The choices a section's __post_init__ enforces are the ones its metadata lists (and docs show)."""
    import pytest

    peft = C.section("peft")
    option_classes = [type(getattr(peft, k)) for k in ("vpt", "ssf", "masked")]
    for cls in (C.DataConfig, C.PeftConfig, C.HeadConfig, C.LossConfig, C.TrainConfig, C.EvalConfig, *option_classes):
        for name in field_choices(cls):
            if name == "parts":
                continue  # '+'-joined parts, each checked
            with pytest.raises(ConfigError, match=f"{name}='not-a-choice' is not valid"):
                cls(**{name: "not-a-choice"})


def test_config_reference_command(tmp_path, capsys):
    out = tmp_path / "ref" / "CONFIG.md"
    assert cli.main(["config-reference", "--out", str(out)]) == 0
    assert out.read_text() == config_reference()
    assert cli.main(["config-reference"]) == 0
    assert capsys.readouterr().out.endswith(config_reference())
