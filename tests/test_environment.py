"""The environment a record names: lock digest and drift from the lock."""

from __future__ import annotations

import hashlib

from kvbench import environment


def test_the_record_env_names_the_lock_by_digest_and_lists_drift_from_it():
    path = environment.lock_path()
    assert path is not None and path.name == "requirements.lock"
    env = environment.environment()
    assert env["lock_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    pins = environment.lock_pins()
    assert {"torch", "transformers", "lm-eval", "hydra-core", "wandb", "datasets", "accelerate"} <= set(pins)
    assert env["lock_drift"] == []  # the test environment is the locked one (make setup checks this too)


def test_drift_names_the_package_and_both_versions_and_ignores_local_build_labels():
    import torch
    import transformers

    pins = {"transformers": "0.0.1", "torch": torch.__version__.split("+")[0], "not-installed-package": "1.0"}
    assert environment.lock_drift(pins) == [f"transformers installed {transformers.__version__}, locked 0.0.1"]


def test_check_command_reports_drift_with_exit_code_1(monkeypatch, capsys):
    assert environment.main(["check"]) == 0
    monkeypatch.setattr(environment, "lock_drift", lambda: ["numpy installed 9, locked 1"])
    assert environment.main(["check"]) == 1
    assert "numpy installed 9, locked 1" in capsys.readouterr().err


def test_a_scripts_report_names_its_command_commit_lock_digest_and_data(monkeypatch):
    monkeypatch.setattr(environment, "git_state", lambda: ("abc1234", True))
    monkeypatch.setattr(environment, "lock_sha256", lambda: "f" * 64)
    line = environment.script_provenance("six passkey prompts", weights="GGUF Q4_1",
                                         argv=["experiments/x/run.py", "--out", "my reports"])
    assert "command `python experiments/x/run.py --out 'my reports'`" in line
    assert "kvbench commit abc1234 (dirty)" in line and f"lock sha256 {'f' * 16}" in line
    assert "weights GGUF Q4_1" in line and line.endswith("data: six passkey prompts.")
    monkeypatch.setattr(environment, "git_state", lambda: ("abc1234", False))
    assert "kvbench commit abc1234;" in environment.script_provenance("d", argv=["x.py"])
