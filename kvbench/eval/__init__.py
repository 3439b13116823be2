"""Evaluation: the context-compression protocol, the lm-eval model, LongBench and synthetic tasks."""
