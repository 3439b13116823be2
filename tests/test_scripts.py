"""Every script in experiments/ and benchmarks/ still imports: nothing else runs them, so a name kvbench renamed
or removed would rot them silently.

Each script is imported as a module, so its top level runs (a script keeps its work behind
``if __name__ == "__main__":``, which the check requires), and then every import statement in it is resolved,
the ones inside functions too: the module must import and each imported name must exist. Attributes read from
an imported kvbench module (``eff.run_once`` after ``from kvbench.eval import efficiency as eff``) must exist
as well. One process, import only: the whole check takes seconds.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("experiments", "benchmarks") for p in (REPO / folder).rglob("*.py"))


def _has_main_guard(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
               and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
               and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
               for node in tree.body)


def _import_script(path: Path) -> None:
    """Import ``path`` as a module (not as ``__main__``), its folder first on sys.path as when it runs."""
    name = "_kvbench_script_" + "_".join(path.with_suffix("").parts[-3:])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))


def _resolve(node: ast.Import | ast.ImportFrom) -> dict[str, types.ModuleType]:
    """Import what ``node`` imports (raising if a module or a name is missing); the kvbench modules it binds,
    by the name they are bound to."""
    bound = {}
    if isinstance(node, ast.Import):
        for alias in node.names:
            module = importlib.import_module(alias.name)
            if alias.asname and alias.name.startswith("kvbench."):
                bound[alias.asname] = module
        return bound
    if node.level:
        raise ImportError("relative import in a script (run as a file, it has no package)")
    module = importlib.import_module(node.module)
    for alias in node.names:
        if alias.name == "*":
            continue
        if hasattr(module, alias.name):
            value = getattr(module, alias.name)
        else:  # a submodule not imported by its package
            try:
                value = importlib.import_module(f"{node.module}.{alias.name}")
            except ModuleNotFoundError:
                raise ImportError(f"cannot import name {alias.name!r} from {node.module!r}") from None
        if isinstance(value, types.ModuleType) and value.__name__.startswith("kvbench."):
            bound[alias.asname or alias.name] = value
    return bound


def import_problems(path: Path) -> list[str]:
    """What keeps the script at ``path`` from running, one ``<file>:<line>: <problem>`` each; [] if nothing."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = []
    if not _has_main_guard(tree):
        problems.append(f"{path}: no `if __name__ == \"__main__\":` guard (importing it would run it)")
    try:
        _import_script(path)
    except Exception as error:  # noqa: BLE001 (any error at import is the script's problem)
        problems.append(f"{path}: importing it raises {type(error).__name__}: {error}")
    modules: dict[str, types.ModuleType] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            try:
                modules.update(_resolve(node))
            except Exception as error:  # noqa: BLE001
                problems.append(f"{path}:{node.lineno}: {ast.unparse(node)}: {type(error).__name__}: {error}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and not hasattr(modules[node.value.id], node.attr)):
            module = modules[node.value.id].__name__
            problems.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}: {module} has no {node.attr!r}")
    return problems


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_script_imports_and_every_name_it_imports_exists(script):
    assert import_problems(script) == []


def test_scripts_of_both_folders_are_found():
    assert {p.relative_to(REPO).parts[0] for p in SCRIPTS} == {"experiments", "benchmarks"}


PLANTED = {
    "a name missing from a kvbench module, imported inside main":
        ("def main():\n    from kvbench.methods import build_methd\n", "build_methd"),
    "a kvbench module that does not exist":
        ("from kvbench.eval.harness import task_manager\n", "kvbench.eval.harness"),
    "a function missing from an imported kvbench module":
        ("def main():\n    from kvbench.eval import efficiency as eff\n    eff.gone_function()\n", "gone_function"),
    "an error at import":
        ("from kvbench.methods import build_method\nbuild_method('no_such_method')\n", "no_such_method"),
}


@pytest.mark.parametrize("case", PLANTED)
def test_check_fails_on_a_planted_bad_script(tmp_path, case):
    source, named = PLANTED[case]
    script = tmp_path / "rotted.py"
    script.write_text(source + "\n\nif __name__ == \"__main__\":\n    main()\n", encoding="utf-8")
    problems = import_problems(script)
    assert problems and all(named in problem for problem in problems), problems


def test_check_fails_on_a_script_without_a_main_guard(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text("from kvbench.methods import build_method\n", encoding="utf-8")
    assert [p for p in import_problems(script) if "guard" in p]
    script.write_text("from kvbench.methods import build_method\n\nif __name__ == '__main__':\n    pass\n")
    assert import_problems(script) == []
