"""A Hydra multirun's progress and its end (:class:`RollupCallback`, ``hydra.callbacks.rollup`` in the root config):
a progress line before each job, and at the end the roll-up table, a summary of the jobs that failed, and exit
code 1 if any did. Hydra's public callback API only: the job count comes from the parsed sweep overrides.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback

from kvbench.errors import KvbenchError
from kvbench.results import RECORD_NAME, RecordError, read_record
from kvbench.tracking import log_rollup


@dataclass
class JobFailure:
    """A job that failed without leaving a record in the sweep dir (a dry run's, or a record that had to go to the
    rescue dir), returned by the job to :class:`RollupCallback`."""

    job: str
    error: str


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def sweep_size(config) -> int | None:
    """How many jobs the basic sweeper launches: the product of the number of values of each key (the sweeper's
    ``params``, then the command line's overrides; a key given twice counts once). None where that cannot be
    told from the overrides alone (another sweeper's syntax, a glob over configs)."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        sizes = {o.get_key_element(): len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
                 for o in overrides}
    except Exception:  # the count is a courtesy (the progress line): never fail the sweep over it
        return None
    return math.prod(sizes.values())


class RollupCallback(Callback):
    """The sweep's progress and its end: a progress line before each job (job k/N and an ETA), and at the end the
    roll-up table, a summary of the jobs that failed, and exit code 1 if any did.

    The callback holds the sweep's state. Jobs started and ended are counted where Hydra runs them in this
    process (the basic launcher); joblib and submitit run them in other processes, with copies of the callback. So
    whether a job failed is read from its record at the sweep's end: the records are the source of truth (a dry
    run writes none: its failures are the jobs' returned :class:`JobFailure`, seen where they ran here)."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.start = 0.0
        self.done = 0
        self.pid: int | None = None
        self.returned_failures: list[JobFailure] = []

    def on_multirun_start(self, config, **kwargs) -> None:
        self.total, self.start, self.done, self.pid = sweep_size(config), time.monotonic(), 0, os.getpid()
        self.returned_failures = []

    def _in_this_process(self) -> bool:
        return self.pid == os.getpid()

    def on_job_start(self, config, **kwargs) -> None:
        """The progress line: job k/N, and an ETA from the jobs done so far (jobs run in this process)."""
        if not self._in_this_process() or config.get("dry_run") or not self.total:
            return
        method = config.hydra.runtime.choices.get("method") or config.method.name
        elapsed = time.monotonic() - self.start
        eta = f", about {_minutes(elapsed / self.done * (self.total - self.done))} left" if self.done else ""
        print(f"kvbench: sweep job {config.hydra.job.num + 1}/{self.total} ({method}) starting; {self.done} done in "
              f"{_minutes(elapsed)}{eta}", file=sys.stderr)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not self._in_this_process():
            return
        self.done += 1
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, JobFailure):
            self.returned_failures.append(job_return.return_value)

    def on_multirun_end(self, config, **kwargs) -> None:
        if config.get("dry_run"):
            failed = len(self.returned_failures)
            print(f"kvbench: dry run: {self.total if self.total is not None else '?'} jobs validated, nothing loaded "
                  "or run" + (f"; {failed} failed" if failed else ""), file=sys.stderr if failed else sys.stdout)
            if failed:
                raise SystemExit(1)
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted(sweep_dir.glob(f"*/{RECORD_NAME}"))
        failures = [failure for failure in map(_failure_in, jobs) if failure is not None] + self.returned_failures
        self._roll_up(config, sweep_dir)
        if failures:
            listed = "; ".join(f"{f.job}: {f.error.splitlines()[0][:160]}" for f in failures)
            total = len(jobs) + len(self.returned_failures)
            print(f"kvbench: {len(failures)} of {total} jobs failed: {listed}", file=sys.stderr)
            raise SystemExit(1)

    @staticmethod
    def _roll_up(config, sweep_dir: Path) -> None:
        """The sweep's table, built once: written (md, csv, png; with ``html=true`` a static site beside them,
        ``<reports_dir>/<name>_site/index.html``), printed, and logged to W&B."""
        from kvbench.report import roll_up, write_report  # pandas and matplotlib, at the sweep's end only

        name = config.get("report_name") or f"sweep_{sweep_dir.name}"
        try:
            rollup = roll_up(sweep_dir)
            paths = write_report(rollup, name, config.get("reports_dir", "outputs/reports"), paper=config.get("paper"))
        except KvbenchError as error:  # no record, or a bad paper CSV
            print(f"kvbench: no sweep table: {error}", file=sys.stderr)
            return
        if config.get("html"):
            from kvbench.site import write_site  # html=true: the roll-up as a static site too

            site = write_site(rollup, Path(config.get("reports_dir", "outputs/reports")) / f"{name}_site", name,
                              paper=config.get("paper"))
            print(f"kvbench: sweep site written to {site}")
        print(f"kvbench: sweep table written to {paths['md']}")
        print(paths["md"].read_text(encoding="utf-8"))
        log_rollup(config.logger, sweep_dir.name, rollup.shown, paths.get("png"), name)


def _failure_in(path: Path) -> JobFailure | None:
    """The failure a job's record states (an unreadable record is one), or None for a complete job."""
    try:
        record = read_record(path)
    except RecordError as error:
        return JobFailure(path.parent.name, str(error))
    return None if record.status == "complete" else JobFailure(path.parent.name, record.error or record.status)
