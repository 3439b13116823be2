"""The software a run measured with: package versions, the lock they were installed from, the device.

``requirements.lock`` (repository root; shipped inside the wheel as ``kvbench/requirements.lock``) pins
every package the README commands install, transitive ones included. A record carries the lock's
sha256 (``env.lock_sha256``) and the pinned packages whose installed version differs from the lock
(``env.lock_drift``, empty when the environment is the locked one), so a figure can be traced to the
exact environment that produced it.

``requirements-cuda.lock`` beside it pins what the CUDA build of the same torch adds (nvidia-*, triton, cuda-*),
so a GPU set-up (``make setup-cuda``) is pinned too; the two files never pin the same package.

``python -m kvbench.environment check`` exits 1 when the installed packages drift from either lock (``make setup``
runs it after installing), and with one line when the lock is missing or corrupt; ``check --cuda`` (``make
setup-cuda``) also requires every CUDA pin installed and a CUDA build of torch.
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
#: The CUDA set-up's pins beside the lock: what torch's CUDA build adds (nvidia-*, triton; ``make setup-cuda``).
CUDA_LOCK_NAME = "requirements-cuda.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def lock_path(name: str = LOCK_NAME) -> Path | None:
    """The lock file: inside the installed package (wheel) or at the repository root (editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / name, package.parent / name):
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
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


def cuda_pins() -> dict[str, str]:
    """The CUDA lock's pins (empty where it is missing)."""
    path = lock_path(CUDA_LOCK_NAME)
    return lock_pins(path) if path else {}


def cuda_gaps() -> list[str]:
    """What a CUDA set-up lacks: CUDA-lock packages that are not installed, and a CPU build of torch."""
    gaps = []
    for name, version in sorted(cuda_pins().items()):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            gaps.append(f"{name} not installed, locked {version}")
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return [*gaps, "torch not installed"]
    if torch_version.endswith("+cpu"):
        gaps.append(f"torch {torch_version} is the CPU build (make setup-cuda installs the CUDA one)")
    return gaps


@lru_cache(maxsize=1)
def lock_sha256() -> str | None:
    path = lock_path()
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else None


def _public(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: the lock pins public versions, so a CPU or CUDA build both match."""
    return version.split("+", 1)[0]


def lock_drift(pins: dict[str, str] | None = None) -> list[str]:
    """Pinned packages whose installed version differs from the lock: ``["name installed X, locked Y", ...]``.

    A pinned package that is not installed is not drift (optional extras, or the CUDA pins on a CPU set-up);
    kvbench itself is not pinned. The default pins are the lock's and the CUDA lock's together.
    """
    pins = {**cuda_pins(), **lock_pins()} if pins is None else pins
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
            "torch_threads": torch.get_num_threads(), "cpu_model": cpu_model(), "load_avg_1m": _load_average(),
            "lock_sha256": lock_sha256(), "lock_drift": lock_drift()}


def cpu_model() -> str | None:
    """The CPU's model name (the first ``model name`` of ``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def script_provenance(data: str, weights: str | None = None, argv: list[str] | None = None) -> str:
    """The provenance line of a report an experiment script writes itself (no run record behind it): the command
    as run, kvbench's commit with its dirty flag, the lock digest, torch's threads, the load, the weights and the
    ``data`` the figures come from (issue 23: every committed report names them)."""
    import shlex

    import torch

    argv = list(sys.argv if argv is None else argv)
    command = shlex.join(["python", argv[0], *argv[1:]]) if argv and argv[0].endswith(".py") else shlex.join(argv)
    commit, dirty = git_state()
    state = "" if dirty is False else " (dirty)" if dirty else " (dirty flag unknown)"
    parts = [f"command `{command}`", f"kvbench commit {commit or 'unknown'}{state}",
             f"lock sha256 {(lock_sha256() or 'unknown')[:16]}", f"torch threads {torch.get_num_threads()}",
             f"1-min load {_load_average()}", *([f"weights {weights}"] if weights else []), f"data: {data}"]
    return "Provenance: " + "; ".join(parts) + "."


def _load_average() -> float | None:
    """The machine's 1-minute load average (context for timings on a shared machine)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def lock_problem(path: Path) -> str | None:
    """Why the lock at ``path`` cannot be trusted (unreadable, a line that is not a pin, e.g. a merge conflict or a
    truncated write, or no pins at all), or None. A lock that only parses partly would check nothing it lost."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        return f"{path} cannot be read as a lock ({type(error).__name__})"
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#") and not _PIN.match(line.strip()):
            return f"{path} line {number} is not a 'name==version' pin: {line.strip()[:60]!r}"
    if not any(_PIN.match(line.strip()) for line in lines):
        return f"{path} pins no package"
    return None


def main(argv: list[str] | None = None) -> int:
    """``check``: the CPU set-up (installed pins of both locks at their versions); ``check --cuda``: also every
    CUDA pin installed and torch a CUDA build. One line for a missing or corrupt lock; exit 1 on any problem."""
    args = sys.argv[1:] if argv is None else argv
    if args not in (["check"], ["check", "--cuda"]):
        print("usage: python -m kvbench.environment check [--cuda]", file=sys.stderr)
        return 2
    names = (LOCK_NAME, CUDA_LOCK_NAME) if "--cuda" in args else (LOCK_NAME,)
    for name in names:
        path = lock_path(name)
        problem = f"no {name} found next to the package or the repository root" if path is None else lock_problem(path)
        if problem:
            print(f"kvbench: error: {problem}; restore it (git checkout {name}) or regenerate it "
                  f"(make {'lock-cuda' if name == CUDA_LOCK_NAME else 'lock'})", file=sys.stderr)
            return 1
    drift = lock_drift() + (cuda_gaps() if "--cuda" in args else [])
    if drift:
        print(f"kvbench: the installed packages differ from {' and '.join(names)}:\n  " + "\n  ".join(drift),
              file=sys.stderr)
        return 1
    pins = len(lock_pins()) + (len(cuda_pins()) if "--cuda" in args else 0)
    print(f"kvbench: environment matches {' + '.join(names)} (sha256 {lock_sha256()[:12]}, {pins} pins)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
