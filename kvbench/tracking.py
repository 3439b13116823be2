"""Weights & Biases run lifecycle: offline by default, always finished, also on error."""

from __future__ import annotations

import logging
import math
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
        import wandb

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

    def log_task(self, task: str, metrics: dict) -> None:
        if self.run is None:
            return
        flat = {f"{task}/{k}": v for k, v in metrics.items() if _is_number(v)}
        if flat:
            self._guard("log", lambda: self.run.log(flat))

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


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _wait_for_offline_log(run_dir: str, timeout_s: float = 10.0) -> None:
    """wandb-core writes an offline run's transaction log shortly *after* ``finish()`` returns;
    wait until it is on disk and stable, so the run is complete when kvbench moves on."""
    import time

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
_BLOCK = 32768
_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte), then LevelDB-style log records


def read_offline_run(run_dir: str | Path) -> dict:
    """What an offline W&B run holds: ``{"config", "history" (list of dicts), "summary"}``.

    Parses the run's ``run-<id>.wandb`` transaction log (LevelDB log framing of W&B's
    protobuf ``Record``s), so offline results can be checked or re-used without uploading.
    """
    import json as _json

    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    out = {"config": {}, "history": [], "summary": {}}
    for payload in _log_payloads(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): _json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = _json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key or "/".join(item.nested_key)] = _json.loads(item.value_json)
    return out


def _log_payloads(data: bytes):
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < 7:
            pos += left_in_block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full record
            yield chunk
        elif kind == 2:  # first fragment
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:
            continue
