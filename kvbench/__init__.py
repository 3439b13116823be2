"""kvbench: a benchmark harness for KV-cache compression in LLMs.

Kept import-light on purpose: importing ``kvbench`` must not import torch,
transformers or lm-eval (the lm-eval CLI hook imports it at start-up).
"""

__version__ = "0.1.0"
