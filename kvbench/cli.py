"""Console entry points: ``kvbench`` (the Hydra app: run and multirun) and ``kvbench-report``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
log = logging.getLogger("kvbench")



def main() -> None:
    """``kvbench [overrides]`` / ``kvbench -m method=full,h2o ...`` (see README)."""
    import hydra

    from kvbench.compose import register_configs
    from kvbench.config import CONF_DIR

    register_configs()
    app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_run_job)
    app()


def _run_job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kvbench.errors import KvbenchError
    from kvbench.runner import run

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        record = run(cfg, hydra_cfg.runtime.output_dir, reuse_loaded=multirun)
    except KvbenchError as error:
        print(f"kvbench: error: {error}", file=sys.stderr)
        if multirun:
            return  # the job's failed record is written; the sweep goes on
        sys.exit(2)
    log.info("%s on %s: %s | kv ratio %s | record %s/record.json", record.method["name"], record.suite["name"],
             {t: round(record.primary_value(t), 4) for t in record.metrics}, record.kv.get("ratio"),
             hydra_cfg.runtime.output_dir)


class RollupCallback(Callback):
    """At the end of a multirun, roll the sweep's records up into ``reports/<report_name>.{md,csv,png}``."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from kvbench.report import write_report

        name = config.get("report_name") or f"sweep_{Path(config.hydra.sweep.dir).name}"
        paths = write_report(config.hydra.sweep.dir, name, config.get("reports_dir", "reports"))
        print(f"kvbench: sweep table written to {paths['md']}")
        print(paths["md"].read_text(encoding="utf-8"))


def report_main(argv: list[str] | None = None) -> None:
    """``kvbench-report DIR [--name NAME] [--reports-dir reports]``."""
    parser = argparse.ArgumentParser(prog="kvbench-report", description="Roll result records up into tables and plots.")
    parser.add_argument("dir", help="directory searched recursively for result records")
    parser.add_argument("--name", help="table name (default: the directory's name)")
    parser.add_argument("--reports-dir", default="reports", help="output directory (default: reports)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        parser.error(f"{root} is not a directory")
    from kvbench.report import write_report

    paths = write_report(root, args.name or root.resolve().name, args.reports_dir)
    for path in paths.values():
        print(path)
