"""kvbench.registry: the one registry shape behind METHODS and SUITES."""

from __future__ import annotations

import sys

import pytest

from kvbench.registry import Registry


def test_register_names_a_class_and_a_second_class_under_the_same_name_is_refused():
    registry = Registry("toy name", "kvbench.methods", lambda cls: cls.label)

    @registry.register
    class First:
        label = "a"

    assert registry == {"a": First} and registry.register(First) is First  # re-registering the same class is fine

    class Second:
        label = "a"

    with pytest.raises(RuntimeError, match="toy name 'a' registered twice"):
        registry.register(Second)


def test_discover_imports_every_module_of_the_package_but_base(tmp_path, monkeypatch):
    package = tmp_path / "toy_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text("raise AssertionError('base is imported by the package, not discovered')\n")
    for name in ("alpha", "beta"):
        (package / f"{name}.py").write_text(f"from toy_registry import REGISTRY\n\n@REGISTRY.register\nclass {name.title()}:\n"
                                            f"    label = {name!r}\n")
    (tmp_path / "toy_registry.py").write_text("from kvbench.registry import Registry\n\n"
                                              "REGISTRY = Registry('toy', 'toy_plugins', lambda cls: cls.label)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from toy_registry import REGISTRY

        assert REGISTRY.discover() is REGISTRY and sorted(REGISTRY) == ["alpha", "beta"]
    finally:
        for name in [m for m in sys.modules if m.startswith(("toy_plugins", "toy_registry"))]:
            del sys.modules[name]


def test_methods_and_suites_are_registries_of_their_packages():
    from kvbench.methods import METHODS
    from kvbench.suites import SUITES

    assert isinstance(METHODS, Registry) and METHODS.package == "kvbench.methods" and "knorm" in METHODS
    assert isinstance(SUITES, Registry) and SUITES.package == "kvbench.suites" and "efficiency" in SUITES


# -- every registered method and suite has a config (cases from the registries, never a hand-kept list) -------
@pytest.mark.parametrize("name", sorted(__import__("kvbench.methods", fromlist=["METHODS"]).METHODS))
def test_every_registered_method_has_its_own_config(name):
    from tests.contracts import assert_method_has_its_config

    assert_method_has_its_config(name)


def test_every_registered_suite_has_a_config_typed_by_its_schema():
    from kvbench.suites import SUITES
    from tests.contracts import assert_suite_has_a_config, suite_configs

    configs = suite_configs()  # every config of the suite group, composed once
    for runner in SUITES:
        assert_suite_has_a_config(runner, configs)
