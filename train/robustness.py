"""``python -m train.robustness``: the command line of :mod:`train.analysis.robustness`."""
from __future__ import annotations

import sys

from train.analysis.robustness import main

if __name__ == "__main__":
    sys.exit(main())
