"""``python -m train.label``: the command line of :mod:`train.loop.label`."""
from __future__ import annotations

import sys

from train.loop.label import main

if __name__ == "__main__":
    sys.exit(main())
