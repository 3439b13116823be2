"""Suites: what a run evaluates. Every module in this package registers its suite on import."""

from kvbench.suites.base import SUITES, RunContext, Suite, TaskResult, build_suite, register

SUITES.discover()

__all__ = ["SUITES", "RunContext", "Suite", "TaskResult", "build_suite", "register"]
