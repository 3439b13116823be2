"""The model ``lm_eval --model kvbench`` builds: kvbench's config from ``--model_args``, then the kvbench LM.

``--model_args model=<conf/model name>,method=<conf/method name>,<override>=<value>,...``: every key other
than ``model``/``method`` is a Hydra override of kvbench's config (``method.<param>``, ``model.<field>``,
``suite.stream_chunk``, ``suite.query_aware``), validated exactly as in ``kvbench``. kvbench's start-up hook
(:mod:`kvbench.lm_eval_plugin`) registers this class with lm-eval as ``kvbench``. A key outside those, a
``--batch_size`` other than 1 (``auto`` included: kvbench scores one sequence at a time) and a ``--device`` this
machine lacks are one line each, before anything loads.
"""

from __future__ import annotations

import sys

from kvbench.compose import compose_config
from kvbench.errors import ConfigError, KvbenchError, fail
from kvbench.eval.lm import KvbenchLM, quiet_lm_eval
from kvbench.runner import load_and_apply
from kvbench.validation import build_method_from, check_method_on_model


class KvbenchCLIModel(KvbenchLM):
    """A user error in ``--model_args`` (unknown name, typo, out-of-range value, a model that cannot load) is
    one line on stderr and exit code 2, as on ``kvbench``; ``KVBENCH_DEBUG=1`` shows the traceback."""

    def __init__(self, model: str = "smollm2_135m", method: str = "full", batch_size=1, device=None,
                 max_batch_size=None, max_length=None, **overrides):
        # ``device``/``max_batch_size`` come from lm-eval's CLI defaults; placement is the model config's
        # ``device_map`` (model_args ``model.device_map=cuda``), batching is 1.
        try:
            check_lm_eval_args(overrides, batch_size, device)
            cfg = compose_config([f"model={model}", f"method={method}", *(f"{k}={v}" for k, v in overrides.items())])
            method_obj = build_method_from(cfg.method)
            check_method_on_model(method_obj, cfg.model)
            loaded, tokenizer, reference_config = load_and_apply(cfg, method_obj)
        except KvbenchError as error:
            fail(error)
        quiet_lm_eval()
        super().__init__(loaded, tokenizer, method_obj, reference_config, max_length=max_length or cfg.model.max_length,
                         stream_chunk=cfg.suite.stream_chunk, batch_size=batch_size, query_aware=cfg.suite.query_aware)

    def get_model_info(self) -> dict:
        """Also prints the KV cache figures on the lm-eval CLI (they are saved in the results JSON's ``config``)."""
        info = super().get_model_info()
        kv = info["kvbench_kv"]
        if self.rank == 0 and kv["stored_bytes"]:
            print(f"kvbench: {info['kvbench_method']}: the KV cache held {kv['stored_bytes'] / 2**20:.2f} MiB where an "
                  f"uncompressed one holds {kv['full_bytes'] / 2**20:.2f} MiB (ratio {kv['ratio']:.2f}x, summed over "
                  "requests after context compression); saved as config.kvbench_kv in lm-eval's results JSON",
                  file=sys.stderr)
        return info


#: The ``--model_args`` keys besides ``model`` and ``method``: prefixes of a kvbench override, and whole keys.
MODEL_ARG_PREFIXES = ("method.", "model.")
MODEL_ARG_KEYS = ("suite.stream_chunk", "suite.query_aware")
#: What lm-eval passes as ``device`` when ``--device`` is not given (its EvaluatorConfig default).
LM_EVAL_DEFAULT_DEVICE = "cuda:0"


def check_lm_eval_args(overrides: dict, batch_size, device) -> None:
    """One :class:`ConfigError` line for ``--model_args`` keys kvbench does not take, a batch size other than 1, or
    a device this machine lacks. lm-eval passes ``cuda:0`` when ``--device`` is not given, so that value alone is
    accepted without a GPU (placement is ``model.device_map`` either way)."""
    unknown = [key for key in overrides if not key.startswith(MODEL_ARG_PREFIXES) and key not in MODEL_ARG_KEYS]
    if unknown:
        raise ConfigError(f"--model_args {', '.join(unknown)}: not a kvbench model_arg (valid: model, method, "
                          f"method.<param>, model.<field>, {', '.join(MODEL_ARG_KEYS)})")
    if str(batch_size) != "1":
        raise ConfigError(f"--batch_size {batch_size}: kvbench evaluates one sequence at a time (use 1, the default)")
    if device is not None and device != LM_EVAL_DEFAULT_DEVICE:
        check_device(str(device))


def check_device(device: str) -> None:
    """``device`` names a device this machine has (cpu; cuda[:i] with i below the GPU count; mps where available)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device} is not a device name (e.g. cpu, cuda, cuda:1, mps)") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    available = {"cpu": True, "cuda": count > (parsed.index or 0),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    if not available.get(parsed.type, False):
        have = ["cpu", *(f"cuda:{i}" for i in range(count)), *(["mps"] if available["mps"] else [])]
        raise ConfigError(f"--device {device} is not available on this machine (available: {', '.join(have)})")
