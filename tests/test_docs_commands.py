"""Every command the README and docs/ show runs as pasted, as far as that can be checked without
minutes of model time: each ``babelgate ...`` line of a fenced shell block parses with the real
``babelgate`` parser (so a renamed or removed flag fails here), each ``python -m babelgate...``
module exists, each ``make`` target is in the Makefile, and each relative link resolves."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from babelgate.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = ("```bash", "```sh", "```console", "```")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def shell_blocks(page: Path) -> list[str]:
    """The bodies of a page's fenced shell blocks (``bash``, ``sh``, ``console`` or none)."""
    blocks, body, kind = [], [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```") and kind is None:
            kind, body = line.strip(), []
        elif line.startswith("```"):
            if kind in SHELL_FENCES:
                blocks.append("\n".join(body))
            kind = None
        else:
            body.append(line)
    return blocks


def shell_commands(page: Path) -> list[str]:
    """The commands of a page's shell blocks: continuation lines joined, comments cut."""
    out = []
    for block in shell_blocks(page):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                out.append(command)
    return out


def commands(prefix: str) -> list[tuple[str, str]]:
    return [(page.name, c) for page in PAGES for c in shell_commands(page) if c.startswith(prefix)]


def test_the_pages_show_commands_of_each_kind() -> None:
    assert len(commands("babelgate ")) >= 5 and commands("make ") and MODULES


@pytest.mark.parametrize(("page", "command"), commands("babelgate "))
def test_babelgate_commands_parse(page: str, command: str) -> None:
    args = shlex.split(command)[1:]
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:  # argparse's way of saying the flags are wrong
        pytest.fail(f"{page}: `{command}` does not parse ({exc})")


PYTHON_M = re.compile(r"python -m (babelgate[\w.]*)")
MODULES = sorted({(page.name, m) for page in PAGES
                  for m in PYTHON_M.findall(page.read_text(encoding="utf-8"))})  # fmt: skip


@pytest.mark.parametrize(("page", "module"), MODULES)
def test_python_modules_exist(page: str, module: str) -> None:
    """``python -m`` anywhere on a page, in blocks or inline."""
    assert importlib.util.find_spec(module) is not None, f"{page}: no module {module}"


@pytest.mark.parametrize(("page", "command"), commands("make "))
def test_make_targets_exist(page: str, command: str) -> None:
    target = shlex.split(command)[1]
    assert re.search(rf"^{re.escape(target)}:", (REPO / "Makefile").read_text(), re.M), page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text(encoding="utf-8"))
               if not t.startswith(("http://", "https://", "mailto:"))]  # fmt: skip
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name}: {missing}"
