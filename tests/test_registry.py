import pytest

from vlm_eval.errors import UnknownNameError
from vlm_eval.registry import Registry


def test_register_get_and_list():
    reg = Registry("widget")

    @reg.register("b")
    def b():
        return "b"

    reg.register_lazy("a", "json:dumps")
    assert reg.names() == ["a", "b"]
    assert reg.get("b") is b
    import json

    assert reg.get("a") is json.dumps


def test_duplicate_names_raise():
    reg = Registry("widget")
    reg.register("x")(object())
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("x")(object())


def test_unknown_name_lists_the_known_ones():
    reg = Registry("widget")
    reg.register("alpha")(1)
    reg.register("beta")(2)
    with pytest.raises(UnknownNameError, match="unknown widget 'gamma'; known: alpha, beta"):
        reg.get("gamma")
