"""compare_recipes: the user's options of the lightweight method go to its run only."""

import pytest

from tailtune.runs import compare


class _Stop(Exception):
    pass


def test_the_users_options_of_the_lightweight_method_go_only_to_its_mode(monkeypatch, tmp_path):
    seen = []

    def fit(cfg, folder):  # record each mode's config; train nothing
        seen.append(cfg)
        return {"test": {}, "params": {}}

    def compare_runs(*args, **kwargs):
        raise _Stop  # every mode is composed by now

    monkeypatch.setattr(compare, "fit", fit)
    monkeypatch.setattr(compare, "compare_runs", compare_runs)
    with pytest.raises(_Stop):
        compare.compare_recipes("lift", overrides=("peft.method=masked", "peft.masked.ratio=0.5"), out_dir=tmp_path)
    assert [(c.peft.method, c.peft.masked.ratio) for c in seen] == [("none", None), ("masked", 0.5), ("full", None)]
