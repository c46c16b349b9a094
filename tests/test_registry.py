import pytest

from tailtune.errors import ConfigError
from tailtune.registry import Registry


def test_register_get_and_duplicates():
    reg = Registry("widget")
    reg.register("alpha")(1)
    assert reg.get("alpha") == 1 and "alpha" in reg and reg.names() == ["alpha"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(2)
    with pytest.raises(ValueError, match="lowercase"):
        reg.register("Beta")


def test_unknown_name_lists_close_matches_and_valid_names():
    reg = Registry("loss")
    for n in ("la", "ce", "focal"):
        reg.register(n)(n)
    with pytest.raises(ConfigError, match=r"unknown loss 'focl'.*Did you mean 'focal'.*Valid: ce, focal, la"):
        reg.get("focl")
