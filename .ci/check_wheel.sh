#!/usr/bin/env bash
# Build kvbench's wheel, install it without -e into a scratch directory, and run a one-example job on the
# tiny random model from a directory outside the checkout: the wheel must carry its config and its lock.
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
"$PY" - "$SCRATCH/site" <<'PY'
import sys
from pathlib import Path

import kvbench.config
import kvbench.environment

site = Path(sys.argv[1]).resolve()
assert Path(kvbench.config.__file__).resolve().is_relative_to(site), f"kvbench imported from {kvbench.config.__file__}"
assert (kvbench.config.CONF_DIR / "config.yaml").is_file(), "the wheel ships no config"
assert kvbench.environment.lock_path().resolve().is_relative_to(site), "the wheel ships no lock"
print(f"wheel: kvbench {kvbench.__version__} from {site}, config and lock inside")
PY
"$SCRATCH/site/bin/kvbench" model=tiny_llama logger=none suite.limit=1 "suite.tasks=[kvbench_recall_mc]" \
    records_dir="$SCRATCH/records" hydra.run.dir="$SCRATCH/run"
"$PY" -c "
import sys
from kvbench.results import read_record
record = read_record(sys.argv[1])
assert record.status == 'complete' and record.metrics, record
print('wheel job:', record.status, record.metrics, 'kv ratio', record.kv['ratio'])
" "$SCRATCH/run/record.json"
