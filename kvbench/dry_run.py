"""``dry_run=true``: every check a run makes before its model loads (:func:`kvbench.validation.validate`), and one
line saying what the job would run. No weights are loaded and nothing is run or recorded; checks that need the
network while offline are named as not checked.
"""

from __future__ import annotations

from omegaconf import DictConfig

from kvbench.results import short_params
from kvbench.support import cell
from kvbench.validation import validate


def dry_run(cfg: DictConfig, method_config: str | None = None) -> str:
    """The job's line: ``model=… method=<label> <params> suite=… tasks=[…] … limit=…: ok`` (or ``ok, except not
    checked offline: …``); a check that fails raises its :class:`~kvbench.errors.KvbenchError`."""
    unavailable: list[str] = []
    plan = validate(cfg, unavailable, method_config)
    suite = cfg.suite
    params = short_params(plan.label_params)
    shots = dict(suite.get("num_fewshot_per_task") or {})
    fewshot = (f" num_fewshot={suite.get('num_fewshot')}" if suite.get("num_fewshot") is not None else "") + (
        " " + " ".join(f"num_fewshot[{k}]={v}" for k, v in shots.items()) if shots else "")
    line = (f"model={cfg.model.name} method={plan.label}{' ' + params if params else ''}"
            f"{' (simulated)' if plan.method.single_pass else ''} suite={suite.name} tasks=[{', '.join(suite.tasks)}]"
            f"{fewshot} limit={suite.limit}{' query_aware' if suite.get('query_aware') else ''}")
    family = cfg.model.get("family")
    if family:  # the method's cell of the family's support-matrix row (kvbench/support.py), beside the job
        line += f" family={family}: {plan.method.name} {cell(family, plan.method.name).status}"
    if unavailable:
        return f"{line}: ok, except not checked offline: " + "; ".join(unavailable)
    return f"{line}: ok"
