"""``python -m train.retrain``: the command line of :mod:`train.loop.retrain`."""
from __future__ import annotations

import sys

from train.loop.retrain import main

if __name__ == "__main__":
    sys.exit(main())
