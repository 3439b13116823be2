"""The Method base class: registry lookups, parameter errors, changed parameters."""

import pytest

from kvbench.methods import METHODS, MethodConfigError, build_method


def test_every_method_has_a_config_file_and_a_module():
    from pathlib import Path

    from kvbench.config import CONF_DIR

    root = Path(__file__).resolve().parents[2]
    for name in METHODS:
        assert (CONF_DIR / "method" / f"{name}.yaml").exists(), name
        assert (root / "kvbench" / "methods" / f"{name}.py").exists(), name


def test_unknown_method_and_parameter_errors_name_the_valid_choices():
    with pytest.raises(MethodConfigError, match=r"method='nope' is not a kvbench method \(choose one of: .*full.*h2o"):
        build_method("nope")
    with pytest.raises(MethodConfigError, match=r"method=h2o has no parameter heavy \(valid: .*heavy_ratio"):
        build_method("h2o", heavy=0.1)


def test_changed_params_lists_only_values_that_differ_from_the_defaults():
    assert build_method("h2o").changed_params() == {}
    assert build_method("h2o", heavy_ratio=0.0, recent_ratio=0.2).changed_params() == {"heavy_ratio": 0.0, "recent_ratio": 0.2}
