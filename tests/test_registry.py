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


def test_a_registry_that_fills_a_config_key_is_found_by_it():
    from tailtune.registry import filling

    reg = Registry("gadget", fills="test.gadget")
    for n in ("zeta", "alpha"):
        reg.register(n)(n)
    assert filling("test.gadget") is reg
    assert reg.in_order() == ["zeta", "alpha"] and reg.names() == ["alpha", "zeta"]
    with pytest.raises(ValueError, match="'test.gadget' is already filled by the gadget registry"):
        Registry("other", fills="test.gadget")
    with pytest.raises(LookupError, match="no registry fills config key 'test.nothing'"):
        filling("test.nothing")
    reg.unregister("zeta")
    assert reg.in_order() == ["alpha"]
    with pytest.raises(ConfigError, match="unknown gadget 'zeta'"):
        reg.unregister("zeta")
