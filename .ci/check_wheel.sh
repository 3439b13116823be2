#!/usr/bin/env bash
# Build kvbench's wheel, install it without -e into a scratch directory, and from a directory outside the
# checkout: check that it ships every YAML of conf/ and its lock, compose every config (tests/test_configs.py
# run against the wheel), dry-run a few experiments through the installed `kvbench`, and run a one-example
# job on the tiny random model, and build the results site of that job from the installed kvbench-report.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$SCRATCH/dist" .
"$PY" -m pip install -q --no-deps --target "$SCRATCH/site" "$SCRATCH"/dist/kvbench-*.whl
mkdir "$SCRATCH/elsewhere"
cd "$SCRATCH/elsewhere"
export PYTHONPATH=$SCRATCH/site HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 KVBENCH_CACHE_DIR=$SCRATCH/cache
export WANDB_SILENT=true
"$PY" - "$SCRATCH/site" "$ROOT/conf" <<'PY'
import sys
from pathlib import Path

import kvbench.config
import kvbench.environment

site, checkout_conf = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
assert Path(kvbench.config.__file__).resolve().is_relative_to(site), f"kvbench imported from {kvbench.config.__file__}"
conf = kvbench.config.CONF_DIR
assert conf.resolve().is_relative_to(site), f"the wheel's kvbench reads its config from {conf}, not its own copy"
shipped = sorted(str(p.relative_to(conf)) for p in conf.rglob("*.yaml"))
source = sorted(str(p.relative_to(checkout_conf)) for p in checkout_conf.rglob("*.yaml"))
assert shipped == source, f"the wheel's conf differs from conf/: {sorted(set(source) ^ set(shipped))}"
assert kvbench.environment.lock_path().resolve().is_relative_to(site), "the wheel ships no lock"
cuda_lock = kvbench.environment.lock_path(kvbench.environment.CUDA_LOCK_NAME)
assert cuda_lock and cuda_lock.resolve().is_relative_to(site), "the wheel ships no CUDA lock"
print(f"wheel: kvbench {kvbench.__version__} from {site}, lock and {len(shipped)} config YAMLs inside ({conf})")
PY
# Every config the wheel ships composes and builds: the checkout's config test, run against the wheel.
cp "$ROOT/tests/test_configs.py" "$SCRATCH/elsewhere/"
"$PY" - "$SCRATCH/site" <<'PY'
import sys
from pathlib import Path

import pytest

import kvbench.config

assert Path(kvbench.config.CONF_DIR).resolve().is_relative_to(Path(sys.argv[1]).resolve()), kvbench.config.CONF_DIR
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "test_configs.py"]))
PY
# Experiments validated job by job through the installed console script (no weights loaded; each job takes
# seconds, so two experiments, not all): the quickstart, and a paper miniature, whose paper CSV the wheel
# does not ship (it is read from the checkout's experiments/).
dry_run() {  # dry_run <experiment> [override ...]
    "$SCRATCH/site/bin/kvbench" "experiment=$1" "${@:2}" dry_run=true logger=none \
        hydra.sweep.dir="$SCRATCH/dry_run_$1" > "$SCRATCH/dry_run.log"
    local jobs
    jobs=$(grep -c "^kvbench: dry run job" "$SCRATCH/dry_run.log" || true)
    echo "wheel dry run of experiment=$1: $jobs jobs validated"
    [ "$jobs" -gt 0 ]
}
dry_run quickstart
dry_run paper_minicache_start_layer_mini paper="$ROOT/experiments/minicache/paper_start_layer.csv"
"$SCRATCH/site/bin/kvbench" model=tiny_llama logger=none suite.limit=1 "suite.tasks=[kvbench_recall_mc]" \
    records_dir="$SCRATCH/records" hydra.run.dir="$SCRATCH/run"
"$PY" -c "
import sys
from kvbench.results import read_record
record = read_record(sys.argv[1])
assert record.status == 'complete' and record.metrics, record
print('wheel job:', record.status, record.metrics, 'kv ratio', record.kv['ratio'])
" "$SCRATCH/run/record.json"
# The results site from the installed wheel: its templates, script and styles are package data.
"$SCRATCH/site/bin/kvbench-report" "$SCRATCH/run" --html "$SCRATCH/html" > /dev/null
test -f "$SCRATCH/html/index.html" && test -f "$SCRATCH/html/assets/site.js" && test -f "$SCRATCH/html/assets/plotly.min.js"
echo "wheel site: $(ls "$SCRATCH/html/runs" | wc -l) run page(s), $(du -sh "$SCRATCH/html" | cut -f1) in all"
