"""``python -m train.evaluate``: the command line of :mod:`train.report`."""
from __future__ import annotations

import sys

from train.report import main

if __name__ == "__main__":
    sys.exit(main())
