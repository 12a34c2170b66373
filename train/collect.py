"""``python -m train.collect``: the command line of :mod:`train.loop.collect`."""
from __future__ import annotations

import sys

from train.loop.collect import main

if __name__ == "__main__":
    sys.exit(main())
