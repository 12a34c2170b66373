"""``python -m train.data``: the command line of :mod:`train.data`."""
from __future__ import annotations

import sys

from train.data import main

if __name__ == "__main__":
    sys.exit(main())
