"""Where a report's numbers come from, stated in the report itself (issue 23: every number traced to a record).

Every generated report opens with the command as it was run, the records it read (and where they are), the kvbench
commit(s) that wrote them with a dirty flag, the lock file digest(s), torch's thread count and the machine's load
at the runs, the model's real weight format (the bundled SmolLM2 is a Q4_1 GGUF dequantised to float32, which
matters for every quantisation result), and the number of samples per task. Values that differ between records are
all listed, so a table that mixes runs says so.
"""

from __future__ import annotations

import shlex
import sys

import pandas as pd


def command_line(argv: list[str] | None = None) -> str:
    """The command as run (program name and arguments), quoted for a shell."""
    argv = list(sys.argv if argv is None else argv)
    return shlex.join([argv[0].rsplit("/", 1)[-1], *argv[1:]]) if argv else ""


def _values(frame: pd.DataFrame, column: str) -> list[str]:
    if column not in frame:
        return []
    return sorted({str(v) for v in frame[column] if v is not None and not (isinstance(v, float) and pd.isna(v))})


def commits(frame: pd.DataFrame) -> str:
    """``abc1234`` / ``abc1234 (dirty)`` per commit the records name; ``unknown`` when none does."""
    if "git_commit" not in frame:
        return "unknown"
    found = {}
    for commit, dirty in zip(frame["git_commit"], frame.get("git_dirty", pd.Series([None] * len(frame)))):
        if isinstance(commit, str):
            state = " (dirty)" if dirty is True else "" if dirty is False else " (dirty flag not recorded)"
            found[f"{commit}{state}"] = True
    return ", ".join(sorted(found)) or "unknown"


def provenance(frame: pd.DataFrame, root, command: str | None = None) -> str:
    """The report's provenance paragraph (markdown)."""
    done = frame[frame["status"] == "complete"] if "status" in frame else frame
    loads = done["load_avg_1m"].dropna() if "load_avg_1m" in done else pd.Series(dtype=float)
    ns = sorted({int(v) for c in done.columns if c.endswith(":n") for v in done[c].dropna()})
    parts = [
        f"command `{command or command_line()}`",
        f"records under `{root}` ({len(frame)} record(s), {len(done)} complete)",
        f"kvbench commit {commits(done)}",
        "lock sha256 " + (", ".join(d[:16] for d in _values(done, "lock_sha256")) or "unknown"),
        "torch threads " + (", ".join(_values(done, "torch_threads")) or "unknown"),
        "CPU " + (", ".join(_values(done, "cpu_model")) or "not recorded"),
        "1-min load " + (f"{loads.min():.1f}-{loads.max():.1f}" if not loads.empty else "unknown"),
        "weights " + ("; ".join(_values(done, "weight_format")) or "unknown"),
        "n per task " + ("-".join(str(n) for n in (ns[0], ns[-1])) if len(ns) > 1 else str(ns[0]) if ns else "unknown"),
    ]
    return "Provenance: " + "; ".join(parts) + "."
