"""``python -m babelgate``: the ``babelgate`` command, for environments without its script."""

import sys

from babelgate.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
