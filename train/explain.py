"""``python -m train.explain``: the command line of :mod:`train.analysis.explain`."""
from __future__ import annotations

import sys

from train.analysis.explain import main

if __name__ == "__main__":
    sys.exit(main())
