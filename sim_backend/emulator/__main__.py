"""``python -m sim_backend.emulator``: see :mod:`sim_backend.emulator.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
