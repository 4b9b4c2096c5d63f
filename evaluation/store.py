"""Resumable results: one JSON line per finished request, appended and fsynced per batch.

Runs in the CLI process. A run directory holds ``run.json`` (the settings that define which rows
exist and what they mean) and JSONL files of finished rows keyed by ``key``. A rerun with the same
settings skips rows already present; a crash or Ctrl-C loses at most the batch in flight (a torn
last line from a crash mid-write is ignored on reading and rewritten by the rerun).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from babelgate.gate.artifact import write_json_atomic

RUN_FILE = "run.json"


class RunMismatchError(ValueError):
    """The output folder holds a run made with other settings."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn (unparseable) final line is dropped, any other bad line is an
    error."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(
                f"{path}:{i + 1}: not JSON ({err}); delete the file to redo it"
            ) from err
    return rows


class ResultStore:
    """Append-only rows keyed by ``row["key"]`` in one JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        for row in read_jsonl(path):
            self.rows[row["key"]] = row
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        """Rewrite the file without a torn last line so appends start on a fresh line."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows.values())
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(body, encoding="utf-8")
            os.replace(tmp, self.path)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append a finished batch durably (one write, flush, fsync)."""
        batch = [dict(r) for r in rows]
        if not batch:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        for r in batch:
            self.rows[r["key"]] = r


def open_run(out: Path, settings: Mapping[str, Any], *, restart: bool = False) -> bool:
    """Create ``out`` for a run with ``settings``, or check that it holds the same run.

    Returns True when resuming. Refuses (``RunMismatchError``) a folder made with other settings
    unless ``restart``, which starts over by clearing the folder's run files.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_FILE
    wanted = json.loads(json.dumps(settings))
    if path.is_file() and not restart:
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != wanted:
            diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise RunMismatchError(
                f"{out} holds an evaluation run with other settings ({', '.join(diff)}): choose "
                "another --out, or pass --restart to discard it"
            )
        return True
    if restart:
        for child in out.iterdir():
            if child.is_file() and (child.suffix in (".jsonl", ".json", ".md", ".png")):
                child.unlink()
    write_json_atomic(path, wanted)
    return False
