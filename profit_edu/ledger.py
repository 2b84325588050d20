"""The ledger: one JSON line per reported number, with the command, seed, commit and hardware behind it.

Every accuracy, size or speed figure that the README or the book reports has a line in
``benchmarks/results/ledger.jsonl``, appended by the script that measured it (never edited by hand).

Which file: the ``path`` argument of :func:`append` and :func:`read`, else ``$PROFIT_EDU_LEDGER``, else the
source checkout's ``benchmarks/results/ledger.jsonl`` when ``profit_edu`` runs from one, else
``benchmarks/results/ledger.jsonl`` under the current directory (an installed package ships no ledger): see
:func:`default_path`, which decides when it is called.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from . import _paths

__all__ = ["LEDGER_ENV", "REQUIRED_KEYS", "append", "default_path", "git_commit", "hardware", "read"]

LEDGER_ENV = "PROFIT_EDU_LEDGER"
_RELATIVE_PATH = Path("benchmarks", "results", "ledger.jsonl")
REQUIRED_KEYS = ("id", "date", "commit", "hardware", "scale", "metric", "value", "seed", "command")


def default_path() -> Path:
    """The ledger file, resolved when called: ``$PROFIT_EDU_LEDGER``, else ``benchmarks/results/ledger.jsonl`` of
    the source checkout ``profit_edu`` runs from, else that relative path under the current directory."""
    env = os.environ.get(LEDGER_ENV)
    if env:
        return Path(env).expanduser()
    checkout = _paths.source_checkout()
    return (checkout if checkout is not None else Path.cwd()) / _RELATIVE_PATH


def git_commit(cwd: Path | None = None) -> str:
    """The current git commit (with ``+dirty`` when tracked files have changes), or ``"unknown"``.

    Changes under ``benchmarks/results/`` (this ledger and the benchmarks' JSON) do not count: they are outputs,
    and appending one line would otherwise mark every later line dirty.

    Args:
        cwd: a folder inside the repository; default the source checkout ``profit_edu`` runs from, else the
            current directory.
    """
    if cwd is None:
        cwd = _paths.source_checkout() or Path.cwd()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def hardware(device: str | torch.device = "cpu") -> str:
    """A short description of where a number was measured, e.g. ``"2-core x86_64 CPU"`` or ``"1x NVIDIA H100"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"1x {torch.cuda.get_device_name(device)}"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {torch.get_num_threads()} threads"


def append(record: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Append one record, filling date, commit and the exact command line when missing; returns it."""
    rec = {
        "date": _dt.date.today().isoformat(),
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **record,
    }
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise ValueError(f"ledger record lacks {missing}; every line needs {list(REQUIRED_KEYS)}")
    path = path or default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    return rec


def read(path: Path | None = None) -> list[dict[str, Any]]:
    """All records of the ledger, oldest first (an empty list when there is none yet)."""
    path = path or default_path()
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
