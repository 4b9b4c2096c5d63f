"""The ``babelgate`` console script: one parser, one subcommand per module of ``cli``.

Runs in the CLI process. Errors the user can fix (bad data, an existing output, an artifact for
another model) print one line saying what to do and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from babelgate.cli import calibrate, recalibrate, serve, sweep
from babelgate.cli import eval as evaluate
from babelgate.gate.artifact import ArtifactError
from babelgate.gate.data import DataError

# The subcommands, in the order ``babelgate --help`` lists them.
COMMANDS = (calibrate, recalibrate, serve, sweep, evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="babelgate",
        description="Cross-lingual safety guardrail inside vLLM serving.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM as an orderly exit: ``finally`` blocks run, so a vLLM engine this process
    started is shut down instead of being orphaned (its processes would keep the CPUs busy)."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script, not a caller in the same process (tests, notebooks)
        signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ArtifactError, DataError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"babelgate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"babelgate {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
