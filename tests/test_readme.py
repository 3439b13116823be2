"""The README's generated sections (record fields, config groups, experiments) are what the code says now."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvbench import config, readme

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", list(readme.SECTIONS))
def test_the_readme_section_is_the_one_generated_from_the_code(name):
    assert readme.section(README.read_text(encoding="utf-8"), name) == readme.SECTIONS[name](), (
        f"README.md's {name} section is stale: run `make readme` (python -m kvbench.readme README.md)")


def test_a_config_added_to_conf_appears_in_the_generated_tables(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(config.CONF_DIR, conf)
    (conf / "method" / "h2o_tiny.yaml").write_text("defaults:\n  - /schema/method/h2o@_here_\n  - _self_\nname: h2o\n")
    (conf / "experiment" / "toy_study.yaml").write_text(
        "# @package _global_\n# A toy study (e.g. for this test). Second sentence.\ndefaults:\n  - override /suite: ruler\n"
        "hydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n      method: full,h2o\n      method.heavy_ratio: 0.1,0.2\n")
    assert "`h2o_tiny` (from `h2o`)" in readme.config_groups_markdown(conf)
    row = next(line for line in readme.experiments_markdown(conf).splitlines() if "`toy_study`" in line)
    assert row == ("| `toy_study` | smollm2_135m | ruler | method: full, h2o; method.heavy_ratio: 0.1, 0.2 (4 jobs) | "
                   "A toy study (e.g. for this test). |")
    (conf / "experiment" / "toy_replicate.yaml").write_text(  # extends toy_study: its suite and sweep, own model
        "# @package _global_\n# The toy study again.\ndefaults:\n  - toy_study\n  - override /model: tiny\n  - _self_\n"
        "suite:\n  options:\n    seed: 1\n")
    row = next(line for line in readme.experiments_markdown(conf).splitlines() if "`toy_replicate`" in line)
    assert row == ("| `toy_replicate` | tiny | ruler | method: full, h2o; method.heavy_ratio: 0.1, 0.2 (4 jobs) | "
                   "The toy study again. |")


def test_regenerating_rewrites_a_stale_section_and_keeps_the_rest(tmp_path):
    text = README.read_text(encoding="utf-8")
    stale = text.replace(readme.section(text, "experiments"), "| experiment |\n|---|\n| `gone` |")
    assert readme.regenerate(stale) == readme.regenerate(text)
    assert readme.regenerate(text).split("<!-- experiments:start -->")[0] == readme.regenerate(stale).split(
        "<!-- experiments:start -->")[0]
    with pytest.raises(ValueError, match="no <!-- experiments:start -->"):
        readme.regenerate(text.replace("<!-- experiments:start -->", ""))
