"""``python -m train.export``: the command line of :mod:`train.export`."""
from __future__ import annotations

import sys

from train.export import main

if __name__ == "__main__":
    sys.exit(main())
