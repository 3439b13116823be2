"""Lets lm-eval's own CLI find kvbench: ``lm_eval --model kvbench --model_args ...``.

lm-eval (0.4.x) has no plugin entry point for models: it knows the models that
``lm_eval.models`` registers. kvbench's wheel installs ``kvbench_lm_eval.pth``, which
runs :func:`install` at interpreter start-up. That only adds an import hook (nothing is
imported); when ``lm_eval.models`` is first imported, the hook registers ``kvbench`` as a
lazy entry pointing at :class:`kvbench.lm_eval_model.KvbenchCLIModel`, so kvbench, torch and
transformers load only when lm-eval actually asks for the model.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

HOOKED_MODULE = "lm_eval.models"
MODEL_NAME = "kvbench"
MODEL_TARGET = "kvbench.lm_eval_model:KvbenchCLIModel"


def register() -> None:
    """Register ``kvbench`` in lm-eval's model registry (idempotent)."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != HOOKED_MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Add the import hook once; if lm-eval's models are already imported, register now."""
    if HOOKED_MODULE in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
