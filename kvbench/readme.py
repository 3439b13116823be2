"""The README's generated sections, rewritten from the code in one command: ``python -m kvbench.readme``.

A README table that lists what the code holds drifts the day someone adds a field, a config or an experiment, so
those tables are generated: the record's fields from the schema (:func:`kvbench.results.record_fields_markdown`),
the config groups and their options from ``conf/``, and the experiments from ``conf/experiment`` (each YAML's
header comment is its description, its ``defaults`` and sweep its model, suite and methods). Each section sits
between ``<!-- name:start -->`` and ``<!-- name:end -->``; ``tests/test_readme.py`` fails when the README's copy
differs from what this module generates (``make readme`` rewrites them). Only ``conf/`` is read: nothing is
composed or imported beyond the record schema, so it runs in a second.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from kvbench import config
from kvbench.results import record_fields_markdown
from kvbench.support import readme_section as support_matrix_markdown

#: What each config group holds (the options are read from conf/).
GROUPS = {
    "model": "which model and how to load it (`kvbench/models.py`, schema `ModelConfig`)",
    "method": "one config per method setting; `name` is the registered method (`kvbench/methods/<name>.py`), "
              "fields = the method dataclass",
    "suite": "tasks, limit, the `runner` (a registered suite: `kvbench/suites/<runner>.py`), its typed `options` "
             "(schema: the suite's `Config`)",
    "logger": "W&B mode (schema `LoggerConfig`)",
    "engine": "what serves the model: kvbench's own `hf` path, or vLLM in its own environment "
              "(`kvbench/engines/`, schema `EngineConfig`; `make engine-env`)",
    "arm": "one (method, engine) pair of a comparison sweep (`+arm=h2o`, `+arm=vllm_fp8`): the engine serves only "
           "the uncompressed model, so a sweep over arms is not a product of methods and engines",
    "experiment": "overrides of the defaults for a study, may set a sweep (`hydra.mode: MULTIRUN`); listed below",
    "hydra/launcher": "where a sweep's jobs run (see Scaling out); Hydra's own `basic`, `joblib`, `submitit_local`, "
                      "`submitit_slurm` too",
}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _defaults(data: dict) -> list[str]:
    """The entries of a config's ``defaults`` list as text (``/schema/method/h2o@_here_``, ``override /model: x``)."""
    out = []
    for entry in data.get("defaults") or []:
        out.extend([entry] if isinstance(entry, str) else [f"{k}: {v}" for k, v in entry.items()])
    return out


def _based_on(path: Path, group: str) -> str | None:
    """The config another option of the group extends (``h2o_local`` -> ``h2o``), or the schema it names when that
    differs from the option's own name; None for a config of its own."""
    for entry in _defaults(_load(path)):
        match = re.fullmatch(rf"/(?:schema/)?{group}/([\w/]+)@_here_", entry)
        if match and match.group(1) not in (path.stem, group):
            return match.group(1)
    return None


def _options(group: str, conf_dir: Path) -> list[str]:
    root_defaults = {entry.split(": ")[0]: entry.split(": ")[1] for entry in _defaults(_load(conf_dir / "config.yaml"))
                     if ": " in entry}
    options = []
    for path in sorted((conf_dir / group).rglob("*.yaml")):
        name = path.relative_to(conf_dir / group).with_suffix("").as_posix()
        notes = ["default"] if root_defaults.get(group) == name else []
        if group == "method" and (base := _based_on(path, group)):
            notes.append(f"from `{base}`")
        options.append(f"`{name}`" + (f" ({', '.join(notes)})" if notes else ""))
    return options


def config_groups_markdown(conf_dir: Path | None = None) -> str:
    """The README's table of config groups: what each holds, and every option in ``conf/``."""
    conf_dir = conf_dir or config.CONF_DIR
    rows = ["| group | holds | options |", "|---|---|---|"]
    for group, holds in GROUPS.items():
        rows.append(f"| `{group}/` | {holds} | {', '.join(_options(group, conf_dir))} |")
    return "\n".join(rows)


def header_comment(path: Path) -> str:
    """A config's description: its leading comment lines (Hydra's ``# @package`` line left out), joined."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def _first_sentence(text: str) -> str:
    """Up to the first full stop that ends a sentence (not ``et al.``, ``e.g.``, a file name or a number)."""
    match = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.(\s|$)", text)
    return (text[:match.start() + 1] if match else text).replace("|", "\\|")


def _sweep(data: dict, chosen: dict) -> str:
    """What an experiment sweeps (``method: full, h2o; method.kv_heads: 16, 8``) and how many jobs that is."""
    params = ((data.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    if not params:
        return f"method: {chosen.get('method', 'full')} (one run)"
    values = {key: str(value) for key, value in params.items()}
    globbed = any(value.startswith("glob(") for value in values.values())
    jobs = "every config" if globbed else f"{math.prod(len(v.split(',')) for v in values.values())} jobs"
    return "; ".join(f"{k}: {v.replace(',', ', ')}" for k, v in values.items()) + f" ({jobs})"


def _experiment(path: Path) -> tuple[dict, dict]:
    """``(config, {group: chosen option})`` of an experiment, with what it inherits from another experiment its
    ``defaults`` name (``longgen_mini_seed1`` extends ``longgen_mini``): the parent's overrides and sweep unless its
    own replace them."""
    data = _load(path)
    chosen, sweep = {}, None
    for entry in _defaults(data):
        parent = path.parent / f"{entry}.yaml"
        if entry != "_self_" and ":" not in entry and parent.is_file() and parent != path:
            parent_data, parent_chosen = _experiment(parent)
            chosen.update(parent_chosen)
            sweep = (parent_data.get("hydra") or {}).get("sweeper")
    chosen.update(entry.removeprefix("override /").split(": ", 1) for entry in _defaults(data)
                  if entry.startswith("override /"))
    if sweep and not ((data.get("hydra") or {}).get("sweeper") or {}).get("params"):
        data = {**data, "hydra": {**(data.get("hydra") or {}), "sweeper": sweep}}
    return data, chosen


def experiments_markdown(conf_dir: Path | None = None) -> str:
    """The README's list of experiments: model, suite, what it sweeps, and the first sentence of each config's
    header comment."""
    conf_dir = conf_dir or config.CONF_DIR
    rows = ["| experiment | model | suite | sweep | what |", "|---|---|---|---|---|"]
    for path in sorted((conf_dir / "experiment").glob("*.yaml")):
        data, chosen = _experiment(path)
        rows.append(f"| `{path.stem}` | {chosen.get('model', 'smollm2_135m')} | {chosen.get('suite', 'quick')} | "
                    f"{_sweep(data, chosen)} | {_first_sentence(header_comment(path))} |")
    return "\n".join(rows)


#: Every generated section of the README: marker name -> what writes it.
SECTIONS: dict[str, Callable[[], str]] = {
    "record-fields": record_fields_markdown,
    "config-groups": config_groups_markdown,
    "experiments": experiments_markdown,
    "support-matrix": support_matrix_markdown,
}


def _markers(name: str) -> re.Pattern:
    return re.compile(rf"<!-- {name}:start -->\n(.*?)\n?<!-- {name}:end -->", re.S)


def section(text: str, name: str) -> str:
    """The README's current copy of section ``name`` (ValueError if its markers are missing)."""
    match = _markers(name).search(text)
    if match is None:
        raise ValueError(f"README has no <!-- {name}:start --> ... <!-- {name}:end --> markers")
    return match.group(1)


def regenerate(text: str) -> str:
    """``text`` (the README) with every generated section replaced by what the code says now."""
    for name, generate in SECTIONS.items():
        section(text, name)  # the markers must be there
        generated = generate()
        text = _markers(name).sub(lambda _: f"<!-- {name}:start -->\n{generated}\n<!-- {name}:end -->", text)
    return text


def main(argv: list[str] | None = None) -> int:
    """``python -m kvbench.readme [README.md]``: rewrite the README's generated sections in place."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).resolve().parents[1] / "README.md"
    old = path.read_text(encoding="utf-8")
    new = regenerate(old)
    if new != old:
        path.write_text(new, encoding="utf-8")
    print(f"{path}: {'rewrote' if new != old else 'up to date:'} {', '.join(SECTIONS)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
