"""``babelgate`` subcommands, one module each; ``cli.main`` registers every one of them.

Runs in the CLI process. Each module exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a ``run(args) -> int``. Importing a command module is cheap once the ``gate``
package (with torch) is loaded; ``serve`` alone imports its stack (FastAPI, uvicorn) in ``run``.
"""
