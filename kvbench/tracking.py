"""Weights & Biases run lifecycle: offline by default, always finished, also on error."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

from kvbench.results import RunRecord

log = logging.getLogger(__name__)


#: Bounds on W&B's network calls, in seconds: starting a run (the connection attempts included) and
#: finishing it. A logger that cannot reach its server costs at most this, then the run goes on.
INIT_TIMEOUT_S = 30
FINISH_TIMEOUT_S = 30


class Tracker:
    """One W&B run for one kvbench run. ``mode="disabled"`` makes every call a no-op.

    W&B is never allowed to cost a result: the record is written before the tracker starts, a run that
    fails to start online falls back to offline (synced later with ``wandb sync``), and one that cannot
    start at all, or fails while logging or finishing, becomes a warning. :attr:`status` says which
    (the record keeps it as ``outputs.wandb``).
    """

    def __init__(self, logger_cfg, config: dict, run_name: str, run_id: str, group: str | None = None,
                 job_type: str | None = None):
        self.run = None
        self.status = "disabled"
        if logger_cfg.mode == "disabled":
            return
        kwargs = dict(project=logger_cfg.project, entity=logger_cfg.entity, group=logger_cfg.group or group,
                      job_type=job_type, tags=list(logger_cfg.tags), dir=logger_cfg.dir, name=run_name, id=run_id,
                      config=config)
        try:
            self.run, self.status = self._start(logger_cfg.mode, kwargs), logger_cfg.mode
        except Exception as error:  # no key, server unreachable, bad entity...: the run goes on
            reason = _one_line(error)
            if logger_cfg.mode == "online":
                log.warning("W&B could not start online (%s); logging offline instead (sync later with `wandb sync`)",
                            reason)
                try:  # a new id: wandb keeps the failed online run's id reserved in this process
                    kwargs["id"] = f"{run_id}-offline"
                    self.run, self.status = self._start("offline", kwargs), f"offline (online failed: {reason})"
                    return
                except Exception as offline_error:
                    reason = f"{reason}; offline: {_one_line(offline_error)}"
            log.warning("W&B could not start (%s); the run goes on without it (the record is written as usual)", reason)
            self.status = f"none (W&B failed to start: {reason})"

    @staticmethod
    def _start(mode: str, kwargs: dict):
        wandb = _wandb()
        Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(init_timeout=INIT_TIMEOUT_S, finish_timeout=FINISH_TIMEOUT_S, x_graphql_retry_max=2,
                                  x_graphql_timeout_seconds=10, silent=True)
        return wandb.init(mode=mode, reinit="create_new", settings=settings, **kwargs)

    def _guard(self, what: str, fn) -> None:
        try:
            fn()
        except Exception as error:
            log.warning("W&B failed to %s (%s); the record is unaffected", what, _one_line(error))
            self.status += f"; {what} failed"

    def log_task(self, task: str, metrics: dict, samples: list[dict] | None = None) -> None:
        """The task's metrics, and a ``wandb.Table`` of its first per-sample outputs (``<task>/samples``)."""
        if self.run is None:
            return
        flat = {f"{task}/{k}": v for k, v in metrics.items() if _is_number(v)}
        if samples:
            wandb = _wandb()
            columns = list(samples[0])
            flat[f"{task}/samples"] = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in samples])
        if flat:
            self._guard("log", lambda: self.run.log(flat))

    def log_efficiency(self, points: list[dict]) -> None:
        """The efficiency suite's points: a ``wandb.Table`` (``efficiency/points``) and, per context length, a line
        plot of throughput against batch size (``efficiency/throughput_ctx<N>``)."""
        if self.run is None or not points:
            return

        def log() -> None:
            wandb = _wandb()
            columns = list(dict.fromkeys(key for point in points for key in point))
            payload = {"efficiency/points": wandb.Table(columns=columns,
                                                        data=[[p.get(c) for c in columns] for p in points])}
            for length in sorted({p["context_length"] for p in points}):
                rows = [[p["batch_size"], p["throughput_tok_s"]] for p in points
                        if p["context_length"] == length and p.get("throughput_tok_s") is not None]
                table = wandb.Table(columns=["batch_size", "throughput_tok_s"], data=sorted(rows))
                payload[f"efficiency/throughput_ctx{length}"] = wandb.plot.line(
                    table, "batch_size", "throughput_tok_s", title=f"throughput vs batch, context {length}")
            self.run.log(payload)

        self._guard("log the efficiency points", log)

    def finish(self, record: RunRecord, exit_code: int = 0) -> None:
        """Write the record's KV bytes, timings and metrics to the run summary and close it."""
        if self.run is None:
            return
        summary = {f"kv/{k}": v for k, v in record.kv.items() if _is_number(v)}
        summary.update({f"timing/{k}": v for k, v in record.timing.items() if _is_number(v)})
        for task, metrics in record.metrics.items():
            summary.update({f"{task}/{k}": v for k, v in metrics.items() if _is_number(v)})
        summary["status"] = record.status
        run_dir = self.run_dir
        self._guard("write the summary", lambda: self.run.summary.update(summary))
        self._guard("finish", lambda: self.run.finish(exit_code=exit_code))
        if self.run.settings.mode == "offline":
            _wait_for_offline_log(run_dir)
        log.info("W&B run %s finished (%s)", self.run.id, self.status)

    @property
    def run_dir(self) -> str | None:
        return None if self.run is None else str(Path(self.run.dir).parent)


def log_rollup(logger_cfg, sweep_id: str, table, image_path: str | None, name: str) -> str:
    """The sweep's roll-up in W&B: a run of ``job_type="rollup"`` in the sweep's group, holding the table
    (``rollup/table``) and the Pareto plot (``rollup/pareto``). Returns a status line; never raises."""
    if logger_cfg.mode == "disabled":
        return "disabled"
    tracker = Tracker(logger_cfg, {"report_name": name}, run_name=f"{name}-rollup", run_id=f"{sweep_id}-rollup",
                      group=sweep_id, job_type="rollup")
    if tracker.run is None:
        return tracker.status

    def log() -> None:
        wandb = _wandb()
        payload = {"rollup/table": wandb.Table(dataframe=table.astype(str))}
        if image_path:
            payload["rollup/pareto"] = wandb.Image(str(image_path))
        tracker.run.log(payload)

    tracker._guard("log the roll-up", log)
    run_dir = tracker.run_dir
    tracker._guard("finish", lambda: tracker.run.finish())
    if tracker.run.settings.mode == "offline":
        _wait_for_offline_log(run_dir)
    return tracker.status


def _wandb():
    """The ``wandb`` module, imported on first use: it takes seconds, and a run whose logger is disabled (or never
    reaches a log call) does not need it."""
    import wandb

    return wandb


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _wait_for_offline_log(run_dir: str, timeout_s: float = 10.0) -> None:
    """wandb-core writes an offline run's transaction log shortly *after* ``finish()`` returns;
    wait until it is on disk and stable, so the run is complete when kvbench moves on."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        logs = list(Path(run_dir).glob("run-*.wandb"))
        size = logs[0].stat().st_size if logs else 0
        if size > _HEADER and size == last:
            return
        last = size
        time.sleep(0.1)
    log.warning("W&B offline log in %s still incomplete after %.0f s", run_dir, timeout_s)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (isinstance(value, float) and math.isnan(value))


# -- reading an offline run back ----------------------------------------------------------------
_HEADER = 7  # bytes of the transaction log's header: a log longer than this holds records


def read_offline_run(run_dir: str | Path) -> dict:
    """What an offline W&B run holds: ``{"run": {id, name, group, job_type}, "config", "history" (list of
    dicts), "summary"}``, so offline results can be checked or reused without uploading.

    Read with W&B's own reader of the run's ``.wandb`` transaction log (``wandb leet inspect --json``),
    not a parser of kvbench's: the binary format is W&B's to change."""
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"wandb could not read the offline run in {run_dir}: {result.stderr.strip()[-300:]}")
    out: dict = {"run": {}, "config": {}, "history": [], "summary": {}}
    for line in result.stdout.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        kind = entry.get("type")
        if kind == "run":
            run = entry["run"]
            out["run"] = {"id": run.get("run_id"), "name": run.get("display_name"), "group": run.get("run_group"),
                          "job_type": run.get("job_type")}
            out["config"].update({k: v for k, v in run.get("config", {}).get("update", {}).items() if k != "_wandb"})
        elif kind == "config":
            out["config"].update(entry["config"].get("update", {}))
        elif kind == "history":
            out["history"].append({k: v for k, v in entry["history"]["item"].items() if not k.startswith("_")})
        elif kind == "summary":
            out["summary"].update(entry["summary"].get("update", {}))
    return out
