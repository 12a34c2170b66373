"""``python -m train.tune``: the command line of :mod:`train.analysis.tune`."""
from __future__ import annotations

import sys

from train.analysis.tune import main

if __name__ == "__main__":
    sys.exit(main())
