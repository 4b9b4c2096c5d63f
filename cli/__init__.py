"""``babelgate`` subcommands, one module each; ``cli.main`` registers every module listed here.

Runs in the CLI process. Each module exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a ``run(args) -> int``; heavy imports happen inside ``run`` so ``--help`` is fast.
"""

COMMANDS = ("calibrate", "recalibrate", "serve", "sweep", "eval")
