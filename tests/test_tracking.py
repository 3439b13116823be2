"""W&B never costs a result: an unreachable server or a missing key is a warning, bounded in time."""

from __future__ import annotations

import socket
import time

import pytest

from kvbench import tracking
from kvbench.compose import compose_config
from kvbench.runner import run

TINY = ["model=tiny_llama", "suite.limit=1", "suite.tasks=[kvbench_recall_mc]"]


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wandb_online_against_a_closed_port_falls_back_offline_and_the_record_completes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a fake key: the server, not the key, is what fails
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config([*TINY, "logger=wandb", f"logger.dir={tmp_path}", f"records_dir={tmp_path / 'records'}"])
    start = time.monotonic()
    record = run(cfg, tmp_path / "run")
    elapsed = time.monotonic() - start
    assert record.status == "complete" and record.metrics
    assert record.outputs["wandb"].startswith("offline (online failed: ")
    assert elapsed < tracking.INIT_TIMEOUT_S + tracking.FINISH_TIMEOUT_S  # bounded: no 100 s hang
    assert list(tmp_path.glob("wandb/offline-run-*")), "the offline fallback run is on disk"


def test_a_logger_that_cannot_start_at_all_is_a_warning(tmp_path, monkeypatch, caplog):
    def broken(mode, kwargs):
        raise RuntimeError(f"no W&B in {mode} mode")

    monkeypatch.setattr(tracking.Tracker, "_start", staticmethod(broken))
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config([*TINY, "logger=wandb", f"logger.dir={tmp_path}", f"records_dir={tmp_path / 'records'}"])
    record = run(cfg, tmp_path / "run")
    assert record.status == "complete"
    assert record.outputs["wandb"] == ("none (W&B failed to start: RuntimeError: no W&B in online mode; "
                                       "offline: RuntimeError: no W&B in offline mode)")
    assert "the run goes on without it" in caplog.text


def test_a_logger_failing_mid_run_is_a_warning_and_the_record_says_so(tmp_path, monkeypatch):
    def explode(self, task, metrics, samples=None):
        self._guard("log", lambda: (_ for _ in ()).throw(ConnectionError("server went away")))

    monkeypatch.setattr(tracking.Tracker, "log_task", explode)
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config([*TINY, "logger=wandb_offline", f"logger.dir={tmp_path}", f"records_dir={tmp_path / 'records'}"])
    record = run(cfg, tmp_path / "run")
    assert record.status == "complete" and record.outputs["wandb"] == "offline; log failed"


@pytest.mark.parametrize("mode", ["disabled"])
def test_a_disabled_logger_does_nothing(mode):
    from omegaconf import OmegaConf

    tracker = tracking.Tracker(OmegaConf.create({"mode": mode}), {}, "n", "id")
    assert tracker.run is None and tracker.status == "disabled"
