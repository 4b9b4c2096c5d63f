"""Reports without the paths of the machine that made them.

Runs in the CLI process (the evaluation and shift report writers) or on its own. A committed
report must read the same on every machine and a resumed run must not depend on where its data
or artifact lie, so the evaluation records a data folder or an artifact by its basename
(``source_name``), next to content hashes and the artifact's fingerprint, never by its absolute
path. Reports written before that rule can be brought in line in place:

    python -m babelgate.evaluation.portable DIR [DIR ...]  # rewrite .json, .jsonl, .md under DIR
    python -m babelgate.evaluation.portable --check DIR    # exit 1 if one holds an absolute path

A rewritten field reads as the current writers would write it (``data``: the folder's basename;
``artifact.path``: the artifact folder's basename); any other absolute path becomes its basename
too. A ``run.json`` rewritten so still equals what ``evaluation.runner.settings_of`` gives for
the same run, so the run resumes (``evaluation.store.open_run`` compares them).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from babelgate.gate.artifact import write_json_atomic

# An absolute POSIX path of two or more components (``/work/shared/data``, ``/root/.cache/x``),
# not part of a relative path, a URL or a ratio like ``f1/question``.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[\w.+@-]+/)+[\w.+@-]+/?")
SUFFIXES = (".json", ".jsonl", ".md")


def source_name(path: str | Path) -> str:
    """How a report records a data folder or an artifact: its basename."""
    return Path(path).name


def portable_text(text: str) -> str:
    """``text`` with every absolute path replaced by its basename."""
    return ABSOLUTE_PATH.sub(lambda m: source_name(m.group(0)), text)


def portable_value(value: Any) -> Any:
    """A JSON value with every absolute path inside its strings replaced by its basename."""
    if isinstance(value, str):
        return portable_text(value)
    if isinstance(value, list):
        return [portable_value(v) for v in value]
    if isinstance(value, dict):
        return {k: portable_value(v) for k, v in value.items()}
    return value


def _portable_jsonl(text: str) -> str:
    """Each JSON line made portable, as the result store writes lines (blank lines kept)."""
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.strip():
            lines.append(line)
            continue
        body = json.dumps(portable_value(json.loads(line)), ensure_ascii=False)
        lines.append(body + ("\n" if line.endswith("\n") else ""))
    return "".join(lines)


def rewrite_file(path: Path, *, check: bool = False) -> bool:
    """Make one report file portable in place (``check``: only say whether it would change).
    Returns whether it changed (or would). JSON is rewritten as the report writers write it."""
    text = path.read_text(encoding="utf-8")
    if not ABSOLUTE_PATH.search(text):
        return False
    if path.suffix == ".json":
        value = json.loads(text)
        new = portable_value(value)
        if new == value:
            return False
        if not check:
            write_json_atomic(path, new)
        return True
    new_text = _portable_jsonl(text) if path.suffix == ".jsonl" else portable_text(text)
    if new_text == text:
        return False
    if not check:
        path.write_text(new_text, encoding="utf-8")
    return True


def rewrite_tree(roots: Sequence[str | Path], *, check: bool = False) -> list[Path]:
    """Make every report file (.json, .jsonl, .md) under ``roots`` portable; returns the files
    that changed (or, with ``check``, would)."""
    changed = []
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in files:
            if path.is_file() and path.suffix in SUFFIXES and rewrite_file(path, check=check):
                changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m babelgate.evaluation.portable",
        description="Replace absolute paths in report files with their basenames.",
    )
    p.add_argument("roots", nargs="+", help="report folders or files")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would")
    args = p.parse_args(argv)
    for root in args.roots:
        if not Path(root).exists():
            p.error(f"{root} does not exist")
    changed = rewrite_tree(args.roots, check=args.check)
    for path in changed:
        print(f"{'would rewrite' if args.check else 'rewrote'} {path}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
