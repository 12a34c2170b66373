"""``python -m train.fairness``: the command line of :mod:`train.analysis.fairness`."""
from __future__ import annotations

import sys

from train.analysis.fairness import main

if __name__ == "__main__":
    sys.exit(main())
