"""A bench run's JSON record: what was run, on which commit and machine, every raw figure.

Imported by the bench scripts (``from record import BenchRecord``: a script run as
``python bench/<name>.py`` has ``bench/`` on its path) and runs in the script's own process. A
figure quoted in the docs is only as good as what can be re-derived from it, and on a shared
machine a figure means little without the load it was measured under, so a record holds the
command line, the git commit and whether the tree was dirty, the machine (cores, memory, CPU
model, load average before and after), the raw figures and the summary derived from them (the
ratios, with their median and spread over rounds). Paths are stored relative
to the repository or as basenames, never as this machine's absolute paths, so records can be
committed under ``docs/bench/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "docs" / "bench"
_SECRET_IN_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@/\s]+@")


def add_out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out``: where the record goes (default ``docs/bench/<name>-<UTC date>.json``)."""
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"the JSON record (default: docs/bench/{name}-<UTC date>.json, never overwritten)",
    )  # fmt: skip


def portable(arg: str) -> str:
    """``arg`` without this machine in it: an absolute path becomes relative to the repository
    (or its basename when outside it), a password in a URL becomes ``***``."""
    arg = _SECRET_IN_URL.sub(r"\g<scheme>:***@", arg)
    if not os.path.isabs(arg):
        return arg
    path = Path(arg)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def command_line(name: str, args: Sequence[str]) -> list[str]:
    """The command as one would type it in the repository: ``python bench/<name>.py`` and the
    arguments made portable (``--flag=/abs/path`` included)."""
    def one(arg: str) -> str:
        flag, eq, value = arg.partition("=")
        return f"{flag}={portable(value)}" if eq and flag.startswith("-") else portable(arg)

    return ["python", f"bench/{name}.py", *(one(a) for a in args)]


def git_state() -> dict[str, Any]:
    """The commit the repository is at and whether its tracked or new files differ from it
    (a dirty tree's figures cannot be re-derived from the commit alone)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                              text=True).stdout  # fmt: skip

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]  # "XY path"
    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(changed),
            "changed": changed}  # fmt: skip


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    """Physical memory in bytes (None where ``sysconf`` does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def machine() -> dict[str, Any]:
    """What the figures were measured on, load average excepted (taken before and after)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
            "memory_bytes": memory_bytes(), "system": platform.platform(),
            "python": platform.python_version()}  # fmt: skip


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to what they mean."""
    return [round(x, 2) for x in os.getloadavg()]


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread of per-round figures (min-max; the quartiles once there are four):
    on a machine whose speed drifts, a median over rounds with its range says how far a
    figure can be trusted, a mean of all rounds does not."""
    ordered = sorted(values)
    out: dict[str, Any] = {"n": len(ordered), "median": statistics.median(ordered),
                           "min": ordered[0], "max": ordered[-1]}  # fmt: skip
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        out.update(q1=q1, q3=q3)
    return out


def describe(summary: dict[str, Any]) -> str:
    """``spread``'s summary in one phrase: ``0.981 (0.952-1.004, 5 rounds)``."""
    return (f"{summary['median']:.3f} ({summary['min']:.3f}-{summary['max']:.3f}, "
            f"{summary['n']} round{'s' * (summary['n'] != 1)})")  # fmt: skip


def default_path(name: str, folder: Path = RECORDS) -> Path:
    """``<folder>/<name>-<UTC date>.json``, with ``-2``, ``-3`` ... when the day has one."""
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    path, n = folder / f"{name}-{day}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{name}-{day}-{n}.json"
    return path


class BenchRecord:
    """One run's record of ``bench/<name>.py``: opened before the measurement (command, commit,
    machine, load), closed after it with the figures (``write``). ``args``: the script's
    arguments, ``sys.argv[1:]`` unless a caller passed its own to the script's ``main``."""

    def __init__(self, name: str, args: Sequence[str] | None = None) -> None:
        self.name = name
        self.data: dict[str, Any] = {
            "bench": name,
            "command": command_line(name, sys.argv[1:] if args is None else args),
            "git": git_state(),
            "machine": machine(),
            "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load_average_before": load_average(),
        }

    def write(self, figures: dict[str, Any], summary: dict[str, Any], out: Path | None) -> Path:
        """Close the record with the raw ``figures`` and the ``summary`` derived from them (the
        ratios with their spread: what the docs quote), write it to ``out`` (default
        ``default_path``) and say where on stdout."""
        self.data["load_average_after"] = load_average()
        self.data["ended_utc"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.data["figures"] = figures
        self.data["summary"] = summary
        path = out or default_path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.data, indent=2, sort_keys=False) + "\n")
        print(f"record: {portable(str(path.resolve()))}", flush=True)
        return path
