"""Console entry points: ``kvbench`` (the Hydra app: run and multirun) and ``kvbench-report``.

Every user error is one line on stderr, ``kvbench: error: <message>`` (exit code 2), printed before any
model loads where possible: Hydra's composition errors are translated (:func:`kvbench.compose.explain`),
everything else is a :class:`~kvbench.errors.KvbenchError`. Set ``KVBENCH_DEBUG=1`` to get the full
traceback instead. A sweep goes on past a failed job (its record says why) and ends with a summary line
and exit code 1 if any job failed (:mod:`kvbench.sweep`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from kvbench.config import CONF_DIR
from kvbench.errors import KvbenchError, debug_mode, fail
from kvbench.results import RECORD_NAME
from kvbench.sweep import JobFailure

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
log = logging.getLogger("kvbench")

#: Hydra command-line flags that take a value (the value is not an override).
_FLAGS_WITH_VALUE = {"--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--cfg", "-c",
                     "--package", "-p", "--experimental-rerun", "--shell-completion", "-sc"}
_HELP = {"--help", "-h", "--hydra-help", "--info", "-i"}

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
  kvbench-report outputs/sweeps/<time> --html site/   the same as a static site to browse (site/index.html)

Config groups (conf/):
{groups}
Any field can be set: method.<param>, model.<field>, suite.limit, suite.options.<option>, logger.mode, ...
`kvbench <overrides> --cfg job` prints the composed config; --hydra-help shows Hydra's own options.
Errors are one line (KVBENCH_DEBUG=1 for a traceback). README.md has the record's fields and the library API.
"""


def help_text() -> str:
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
    """``kvbench [overrides]`` / ``kvbench -m method=full,h2o ...`` (see README). ``--help`` imports nothing heavy;
    the overrides are checked (every config composed, which loads the method and suite registries) before Hydra
    starts any job."""
    args = sys.argv[1:]
    if {"--help", "-h"} & set(args):
        print(help_text())
        return
    from kvbench.compose import check_overrides, register_configs  # the registries: torch, transformers, lm-eval
    from kvbench.validation import check_writable

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
    app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_run_job)
    app()  # a sweep with a failed job ends in kvbench.sweep.RollupCallback.on_multirun_end, with exit code 1


def _run_job(cfg) -> JobFailure | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    job = hydra_cfg.job.num if multirun else None
    if cfg.get("dry_run"):
        return _dry_run_job(cfg, job, hydra_cfg.runtime.choices.get("method"))
    from kvbench.runner import run  # a job's entry point: the model, the method, the suite

    try:
        record = run(cfg, hydra_cfg.runtime.output_dir, reuse_loaded=multirun, job_num=job or 0,
                     sweep_id=Path(hydra_cfg.sweep.dir).name if multirun else None,
                     method_config=hydra_cfg.runtime.choices.get("method"))
    except KvbenchError as error:
        if not multirun:
            fail(error)
        print(f"kvbench: error: job {job} ({cfg.method.name}): {error}", file=sys.stderr)
        if (Path(hydra_cfg.runtime.output_dir) / RECORD_NAME).exists():
            return None  # the job's failed record is written; the sweep goes on
        return JobFailure(f"job {job}", str(error))  # no record where the sweep's end looks (a full disk)
    except Exception:
        if not multirun or debug_mode():
            raise
        log.exception("job %s (%s) failed; its record says why, and the sweep goes on", job, cfg.method.name)
        return None
    if os.environ.get("RANK", "0") != "0":  # a data-parallel rank other than 0: rank 0 reports
        return None
    if multirun:
        print(f"kvbench: job {job} {record.method.label or record.method.name}: {record.status}, "
              + ", ".join(f"{t} {_value(record.primary_value(t))}" for t in record.metrics)
              + (f" | KV {record.kv.ratio:.2f}x" if record.kv.ratio else ""))
    else:
        print(summary(record, Path(hydra_cfg.runtime.output_dir)))
    return None


def _dry_run_job(cfg, job: int | None, method_config: str | None) -> JobFailure | None:
    """``dry_run=true``: validate the job without loading weights and print what it would run."""
    from kvbench.dry_run import dry_run  # validation: the method and suite registries

    where = f"job {job}" if job is not None else "run"
    try:
        line = dry_run(cfg, method_config)
        if cfg.get("paper"):
            from kvbench.paper import read_paper  # pandas, only for a sweep that names a paper

            read_paper(cfg.paper)
    except KvbenchError as error:
        if job is None:
            fail(error)
        print(f"kvbench: error: dry run {where} ({cfg.method.name}): {error}", file=sys.stderr)
        return JobFailure(where, str(error))
    print(f"kvbench: dry run {where}: {line}")
    return None


def _value(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def summary(record, output_dir: Path) -> str:
    """A single run's closing table: task, metric, value ± interval, n; then KV ratio and decode speed."""
    rows = [f"kvbench: {record.method.label or record.method.name} on {record.suite.name} "
            f"({record.model.name}), record {output_dir / RECORD_NAME}",
            f"  {'task':28} {'metric':18} {'value':>10}  {'95% interval':>22} {'n':>5}"]
    for task, primary in record.primary_metrics.items():
        low_high = record.intervals.get(task)
        interval = f"[{_value(low_high[0])}, {_value(low_high[1])}]" if low_high else ""
        rows.append(f"  {task[:28]:28} {primary['name'][:18]:18} {_value(record.primary_value(task)):>10}  "
                    f"{interval:>22} {record.n_samples.get(task, ''):>5}")
    kv, timing, env = record.kv, record.timing, record.env
    if kv.ratio and kv.source == "engine":  # per token, from the engine's block accounting (no bytes measured)
        rows.append(f"  KV cache: {kv.ratio:.2f}x smaller than uncompressed per token, engine-reported "
                    f"({(kv.notes or {}).get('engine')}, kv_cache_dtype={(kv.notes or {}).get('kv_cache_dtype')})")
    elif kv.ratio:
        rows.append(f"  KV cache: {kv.ratio:.2f}x smaller than uncompressed ({kv.stored_bytes / 2**20:.1f} of "
                    f"{kv.full_bytes / 2**20:.1f} MiB over the run's requests)"
                    + (f"; decode {timing.decode_tok_s:.1f} tok/s on {env.device}, "
                       f"{env.torch_threads} threads, load {env.load_avg_1m}" if timing.decode_tok_s else ""))
    return "\n".join(rows)


def report_main(argv: list[str] | None = None) -> None:
    """``kvbench-report DIR [--name NAME] [--reports-dir outputs/reports] [--format latex ...] [--html OUT]``."""
    parser = argparse.ArgumentParser(prog="kvbench-report", description="Roll result records up into tables and plots.")
    parser.add_argument("dir", help="directory searched recursively for result records")
    parser.add_argument("--name", help="table name (default: the directory's name)")
    parser.add_argument("--reports-dir", default="outputs/reports", help="output directory (default: outputs/reports)")
    parser.add_argument("--format", action="append", choices=["md", "csv", "png", "latex"],
                        help="what to write (repeatable; default: md, csv and png; latex writes a .tex table)")
    parser.add_argument("--paper", metavar="CSV",
                        help="a paper's numbers (experiments/<paper>/paper_<table>.csv): also write <name>_paper.md "
                             "and .csv with ours | paper | delta per task")
    parser.add_argument("--html", metavar="OUT",
                        help="write a static site (overview, Pareto, efficiency, run pages; opens from file://) into "
                             "OUT; the md/csv/png files are then written only if --format asks for them")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    name = args.name or root.resolve().name
    from kvbench.report import write_report  # the entry point of a report: pandas and matplotlib

    try:
        paths = {}
        if args.format or not args.html:
            formats = tuple("tex" if f == "latex" else f for f in (args.format or ["md", "csv", "png"]))
            paths = write_report(root, name, args.reports_dir, formats, paper=args.paper,
                                 command=shlex.join(["kvbench-report", *(sys.argv[1:] if argv is None else argv)]))
        if args.html:
            from kvbench.site import write_site  # Jinja2 and the site's templates

            paths["html"] = write_site(root, args.html, name, paper=args.paper)
    except (KvbenchError, OSError) as error:
        fail(error, prog="kvbench-report")
    for path in paths.values():
        print(path)
