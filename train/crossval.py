"""``python -m train.crossval``: the command line of :mod:`train.analysis.crossval`."""
from __future__ import annotations

import sys

from train.analysis.crossval import main

if __name__ == "__main__":
    sys.exit(main())
