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
#: The running multirun, for the progress line: its job count and start time (basic launcher: same process).
_SWEEP: dict = {}

HELP = """kvbench: benchmark KV-cache compression in LLMs: how much memory it really saves, how much faster decoding
gets, what it costs in accuracy. A run composes a model, a method and a suite (Hydra), evaluates through
lm-evaluation-harness, LongBench or RULER-style tasks, and writes a JSON record (+ an offline W&B run).

Usage: kvbench [group=option ...] [key=value ...]        one run
       kvbench -m key=a,b,c ...                         a sweep (Hydra multirun), rolled up into a table

Examples:
  kvbench                                        full cache, bundled SmolLM2-135M, offline quick suite
  kvbench method=h2o method.heavy_ratio=0.05     one method, one parameter changed
  kvbench -m method=full,h2o,minicache           compare methods; table in outputs/reports/
  kvbench experiment=quickstart                  every method on the bundled model (a few minutes on 2 cores)
  kvbench suite=ruler method=snapkv              RULER-style retrieval at 384/768 tokens
  kvbench -m hydra/launcher=slurm hydra.launcher.partition=gpu model=llama2_7b method=full,h2o
  kvbench-report outputs/sweeps/<time>           roll up any directory of records (md, csv, png; --format latex)

Config groups (conf/):
{groups}
Any field can be set: method.<param>, model.<field>, suite.limit, suite.options.<option>, logger.mode, ...
`kvbench <overrides> --cfg job` prints the composed config; --hydra-help shows Hydra's own options.
Errors are one line (KVBENCH_DEBUG=1 for a traceback). README.md has the record's fields and the library API.
"""


def help_text() -> str:
    from kvbench.config import CONF_DIR

    lines = []
    for group in ("model", "method", "suite", "logger", "experiment", "hydra/launcher"):
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        if group == "hydra/launcher":
            options = ["basic", "joblib", "submitit_local", "submitit_slurm", *options]
        lines.append(f"  {group + ':':16}{', '.join(options)}")
    return HELP.format(groups="\n".join(lines))


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
    if {"--help", "-h"} & set(args):
        print(help_text())
        return
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
    if cfg.get("dry_run"):
        _dry_run_job(cfg, hydra_cfg.job.num if multirun else None, hydra_cfg.runtime.choices.get("method"))
        return
    if multirun:
        _progress(hydra_cfg.job.num, hydra_cfg.runtime.choices.get("method") or cfg.method.name)
    try:
        record = run(cfg, hydra_cfg.runtime.output_dir, reuse_loaded=multirun,
                     job_num=hydra_cfg.job.num if multirun else 0,
                     sweep_id=Path(hydra_cfg.sweep.dir).name if multirun else None,
                     method_config=hydra_cfg.runtime.choices.get("method"))
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
    if multirun:
        _SWEEP["done"] = _SWEEP.get("done", 0) + 1
        print(f"kvbench: job {hydra_cfg.job.num} {record.method.get('label', record.method['name'])}: {record.status}, "
              + ", ".join(f"{t} {_value(record.primary_value(t))}" for t in record.metrics)
              + (f" | KV {record.kv['ratio']:.2f}x" if record.kv.get("ratio") else ""))
    else:
        print(summary(record, Path(hydra_cfg.runtime.output_dir)))


def _dry_run_job(cfg, job: int | None, method_config: str | None) -> None:
    """``dry_run=true``: validate the job without loading weights and print what it would run."""
    from kvbench.errors import KvbenchError
    from kvbench.runner import dry_run

    where = f"job {job}" if job is not None else "run"
    try:
        line = dry_run(cfg, method_config)
        if cfg.get("paper"):
            from kvbench.paper import read_paper

            read_paper(cfg.paper)
    except KvbenchError as error:
        if job is None:
            fail(error)
        print(f"kvbench: error: dry run {where} ({cfg.method.name}): {error}", file=sys.stderr)
        _SWEEP_FAILURES.append((where, str(error)))
        return
    print(f"kvbench: dry run {where}: {line}")


def _value(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def summary(record, output_dir: Path) -> str:
    """A single run's closing table: task, metric, value ± interval, n; then KV ratio and decode speed."""
    rows = [f"kvbench: {record.method.get('label', record.method['name'])} on {record.suite['name']} "
            f"({record.model['name']}), record {output_dir / 'record.json'}",
            f"  {'task':28} {'metric':18} {'value':>10}  {'95% interval':>22} {'n':>5}"]
    for task, primary in record.primary_metrics.items():
        low_high = record.intervals.get(task)
        interval = f"[{_value(low_high[0])}, {_value(low_high[1])}]" if low_high else ""
        rows.append(f"  {task[:28]:28} {primary['name'][:18]:18} {_value(record.primary_value(task)):>10}  "
                    f"{interval:>22} {record.n_samples.get(task, ''):>5}")
    kv, timing, env = record.kv, record.timing, record.env
    if kv.get("ratio"):
        rows.append(f"  KV cache: {kv['ratio']:.2f}x smaller than uncompressed ({kv['stored_bytes'] / 2**20:.1f} of "
                    f"{kv['full_bytes'] / 2**20:.1f} MiB over the run's requests)"
                    + (f"; decode {timing['decode_tok_s']:.1f} tok/s on {env.get('device')}, "
                       f"{env.get('torch_threads')} threads, load {env.get('load_avg_1m')}" if timing.get("decode_tok_s") else ""))
    return "\n".join(rows)


def _progress(job: int, method: str) -> None:
    """The sweep-level progress line: job k/N, and an ETA from the jobs done so far (basic launcher)."""
    import time

    total, start, done = _SWEEP.get("total"), _SWEEP.get("start"), _SWEEP.get("done", 0)
    if not total or start is None:
        return
    elapsed = time.monotonic() - start
    eta = f", about {_minutes(elapsed / done * (total - done))} left" if done else ""
    print(f"kvbench: sweep job {job + 1}/{total} ({method}) starting; {done} done in {_minutes(elapsed)}{eta}",
          file=sys.stderr)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class RollupCallback(Callback):
    """At the end of a multirun: the sweep's roll-up table, and a summary of the jobs that failed."""

    def on_multirun_start(self, config, **kwargs) -> None:
        import time

        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        try:
            parsed = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
            total = sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
        except Exception:  # the progress line is a courtesy: never fail the sweep over it
            total = None
        _SWEEP.clear()
        _SWEEP.update(total=total, start=time.monotonic(), done=0)

    def on_multirun_end(self, config, **kwargs) -> None:
        from kvbench.errors import KvbenchError
        from kvbench.report import write_report
        from kvbench.results import RECORD_NAME, RecordError, read_record

        if config.get("dry_run"):
            total = _SWEEP.get("total")
            failed = len(_SWEEP_FAILURES)
            print(f"kvbench: dry run: {total if total is not None else '?'} jobs validated, nothing loaded or run"
                  + (f"; {failed} failed" if failed else ""), file=sys.stderr if failed else sys.stdout)
            return

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
            paths = write_report(sweep_dir, name, config.get("reports_dir", "outputs/reports"), paper=config.get("paper"))
        except KvbenchError as error:  # no record, or a bad paper CSV
            print(f"kvbench: no sweep table: {error}", file=sys.stderr)
        else:
            print(f"kvbench: sweep table written to {paths['md']}")
            print(paths["md"].read_text(encoding="utf-8"))
            from kvbench.report import collect, comparison_table, display_table
            from kvbench.tracking import log_rollup

            table = display_table(comparison_table(collect(sweep_dir)[0]))
            log_rollup(config.logger, sweep_dir.name, table, paths.get("png"), name)
        if _SWEEP_FAILURES:
            listed = "; ".join(f"{job}: {error.splitlines()[0][:160]}" for job, error in _SWEEP_FAILURES)
            print(f"kvbench: {len(_SWEEP_FAILURES)} of {len(jobs)} jobs failed: {listed}", file=sys.stderr)


def report_main(argv: list[str] | None = None) -> None:
    """``kvbench-report DIR [--name NAME] [--reports-dir outputs/reports] [--format latex ...]``."""
    from kvbench.errors import KvbenchError

    parser = argparse.ArgumentParser(prog="kvbench-report", description="Roll result records up into tables and plots.")
    parser.add_argument("dir", help="directory searched recursively for result records")
    parser.add_argument("--name", help="table name (default: the directory's name)")
    parser.add_argument("--reports-dir", default="outputs/reports", help="output directory (default: outputs/reports)")
    parser.add_argument("--format", action="append", choices=["md", "csv", "png", "latex"],
                        help="what to write (repeatable; default: md, csv and png; latex writes a .tex table)")
    parser.add_argument("--paper", metavar="CSV",
                        help="a paper's numbers (experiments/<paper>/paper_<table>.csv): also write <name>_paper.md "
                             "and .csv with ours | paper | delta per task")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    from kvbench.report import write_report

    try:
        formats = tuple("tex" if f == "latex" else f for f in (args.format or ["md", "csv", "png"]))
        paths = write_report(root, args.name or root.resolve().name, args.reports_dir, formats, paper=args.paper)
    except (KvbenchError, OSError) as error:
        fail(error, prog="kvbench-report")
    for path in paths.values():
        print(path)
