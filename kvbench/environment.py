"""The software a run measured with: package versions, the lock they were installed from, the device.

``requirements.lock`` (repository root; shipped inside the wheel as ``kvbench/requirements.lock``) pins
every package the README commands install, transitive ones included. A record carries the lock's
sha256 (``env.lock_sha256``) and the pinned packages whose installed version differs from the lock
(``env.lock_drift``, empty when the environment is the locked one), so a figure can be traced to the
exact environment that produced it.

``python -m kvbench.environment check`` exits 1 when the installed packages drift from the lock
(``make setup`` runs it after installing).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

LOCK_NAME = "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def lock_path() -> Path | None:
    """The lock file: inside the installed package (wheel) or at the repository root (editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / LOCK_NAME, package.parent / LOCK_NAME):
        if candidate.is_file():
            return candidate
    return None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path | None = None) -> dict[str, str]:
    """``{canonical package name: pinned version}`` from the lock file (empty if there is none)."""
    path = path or lock_path()
    if path is None:
        return {}
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


@lru_cache(maxsize=1)
def lock_sha256() -> str | None:
    path = lock_path()
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else None


def _public(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: the lock pins public versions, so a CPU or CUDA build both match."""
    return version.split("+", 1)[0]


def lock_drift(pins: dict[str, str] | None = None) -> list[str]:
    """Pinned packages whose installed version differs from the lock: ``["name installed X, locked Y", ...]``.

    A pinned package that is not installed is not drift (optional extras); kvbench itself is not pinned.
    """
    pins = lock_pins() if pins is None else pins
    installed = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            installed.setdefault(_canonical(name), dist.version)
    return [f"{name} installed {installed[name]}, locked {version}" for name, version in sorted(pins.items())
            if name in installed and _public(installed[name]) != _public(version)]


def git_state() -> tuple[str | None, bool | None]:
    """``(short commit, whether tracked files differ from it)`` of kvbench's checkout; ``(None, None)`` outside one."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                                  timeout=5).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD") or None
        return commit, (bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment() -> dict:
    """The record's ``env`` field."""
    import lm_eval
    import torch
    import transformers

    import kvbench

    commit, dirty = git_state()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "lm_eval": lm_eval.__version__, "kvbench": kvbench.__version__, "device": device, "git_commit": commit,
            "git_dirty": dirty,
            "torch_threads": torch.get_num_threads(), "load_avg_1m": _load_average(), "lock_sha256": lock_sha256(),
            "lock_drift": lock_drift()}


def _load_average() -> float | None:
    """The machine's 1-minute load average (context for timings on a shared machine)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["check"]:
        print("usage: python -m kvbench.environment check", file=sys.stderr)
        return 2
    path = lock_path()
    if path is None:
        print(f"kvbench: error: no {LOCK_NAME} found next to the package or the repository root", file=sys.stderr)
        return 1
    drift = lock_drift()
    if drift:
        print(f"kvbench: the installed packages differ from {path}:\n  " + "\n  ".join(drift), file=sys.stderr)
        return 1
    print(f"kvbench: environment matches {path.name} (sha256 {lock_sha256()[:12]}, {len(lock_pins())} pins)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
