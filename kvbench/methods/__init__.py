"""Compression methods. Every module in this package registers its method on import."""

from kvbench.methods.base import METHODS, Method, MethodConfigError, build_method, register

METHODS.discover()

__all__ = ["METHODS", "Method", "MethodConfigError", "build_method", "register"]
