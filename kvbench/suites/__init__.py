"""Suites: what a run evaluates. Every module in this package registers its suite on import."""

import importlib
import pkgutil

from kvbench.suites.base import SUITES, RunContext, Suite, TaskResult, build_suite, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SUITES", "RunContext", "Suite", "TaskResult", "build_suite", "register"]
