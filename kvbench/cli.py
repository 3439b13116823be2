"""Console entry points: ``kvbench`` (the Hydra app: run and multirun) and ``kvbench-report``.

Every user error is one line on stderr, ``kvbench: error: <message>`` (exit code 2), printed before any
model loads where possible: Hydra's composition errors are translated (:func:`kvbench.compose.explain`),
everything else is a :class:`~kvbench.errors.KvbenchError`. Set ``KVBENCH_DEBUG=1`` to get the full
traceback instead. A sweep goes on past a failed job (its record says why) and ends with a summary line
and exit code 1 if any job failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from kvbench.errors import debug_mode, fail

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
log = logging.getLogger("kvbench")

#: Hydra command-line flags that take a value (the value is not an override).
_FLAGS_WITH_VALUE = {"--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--cfg", "-c",
                     "--package", "-p", "--experimental-rerun", "--shell-completion", "-sc"}
_HELP = {"--help", "-h", "--hydra-help", "--info", "-i"}
#: Jobs of the multirun that just ended: ``(job, error)`` of each failed one (set by :class:`RollupCallback`).
_SWEEP_FAILURES: list[tuple[str, str]] = []


def _overrides(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in _FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def main() -> None:
    """``kvbench [overrides]`` / ``kvbench -m method=full,h2o ...`` (see README)."""
    import hydra

    from kvbench.compose import check_overrides, register_configs
    from kvbench.config import CONF_DIR
    from kvbench.errors import KvbenchError
    from kvbench.validation import check_writable

    args = sys.argv[1:]
    if not _HELP & set(args):
        try:
            overrides = _overrides(args)
            check_overrides(overrides)
            for override in overrides:  # Hydra creates these before any job runs
                key, _, value = override.partition("=")
                if key in ("hydra.run.dir", "hydra.sweep.dir") and "${" not in value:
                    check_writable(value, key)
        except KvbenchError as error:
            fail(error)
    register_configs()
    _SWEEP_FAILURES.clear()
    app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_run_job)
    app()
    if _SWEEP_FAILURES:
        sys.exit(1)


def _run_job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kvbench.errors import KvbenchError
    from kvbench.runner import run

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        record = run(cfg, hydra_cfg.runtime.output_dir, reuse_loaded=multirun,
                     job_num=hydra_cfg.job.num if multirun else 0,
                     sweep_id=Path(hydra_cfg.sweep.dir).name if multirun else None)
    except KvbenchError as error:
        if not multirun:
            fail(error)
        print(f"kvbench: error: job {hydra_cfg.job.num} ({cfg.method.name}): {error}", file=sys.stderr)
        return  # the job's failed record is written; the sweep goes on
    except Exception as error:
        if not multirun or debug_mode():
            raise
        log.exception("job %s (%s) failed; its record says why, and the sweep goes on", hydra_cfg.job.num,
                      cfg.method.name)
        return
    if os.environ.get("RANK", "0") != "0":  # a data-parallel rank other than 0: rank 0 reports
        return
    log.info("%s on %s: %s | kv ratio %s | record %s/record.json", record.method["name"], record.suite["name"],
             {t: round(record.primary_value(t), 4) for t in record.metrics}, record.kv.get("ratio"),
             hydra_cfg.runtime.output_dir)


class RollupCallback(Callback):
    """At the end of a multirun: the sweep's roll-up table, and a summary of the jobs that failed."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from kvbench.report import ReportError, write_report
        from kvbench.results import RECORD_NAME, RecordError, read_record

        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted(p for p in sweep_dir.glob(f"*/{RECORD_NAME}"))
        for path in jobs:
            try:
                record = read_record(path)
            except RecordError as error:
                _SWEEP_FAILURES.append((path.parent.name, str(error)))
                continue
            if record.status != "complete":
                _SWEEP_FAILURES.append((path.parent.name, record.error or record.status))
        name = config.get("report_name") or f"sweep_{sweep_dir.name}"
        try:
            paths = write_report(sweep_dir, name, config.get("reports_dir", "reports"))
        except ReportError as error:
            print(f"kvbench: no sweep table: {error}", file=sys.stderr)
        else:
            print(f"kvbench: sweep table written to {paths['md']}")
            print(paths["md"].read_text(encoding="utf-8"))
        if _SWEEP_FAILURES:
            listed = "; ".join(f"{job}: {error.splitlines()[0][:160]}" for job, error in _SWEEP_FAILURES)
            print(f"kvbench: {len(_SWEEP_FAILURES)} of {len(jobs)} jobs failed: {listed}", file=sys.stderr)


def report_main(argv: list[str] | None = None) -> None:
    """``kvbench-report DIR [--name NAME] [--reports-dir reports]``."""
    from kvbench.errors import KvbenchError

    parser = argparse.ArgumentParser(prog="kvbench-report", description="Roll result records up into tables and plots.")
    parser.add_argument("dir", help="directory searched recursively for result records")
    parser.add_argument("--name", help="table name (default: the directory's name)")
    parser.add_argument("--reports-dir", default="reports", help="output directory (default: reports)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    from kvbench.report import write_report

    try:
        paths = write_report(root, args.name or root.resolve().name, args.reports_dir)
    except (KvbenchError, OSError) as error:
        fail(error, prog="kvbench-report")
    for path in paths.values():
        print(path)
