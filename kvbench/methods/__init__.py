"""Compression methods. Every module in this package registers its method on import."""

import importlib
import pkgutil

from kvbench.methods.base import METHODS, Method, MethodConfigError, build_method, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "MethodConfigError", "build_method", "register"]
