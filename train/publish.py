"""``python -m train.publish``: the command line of :mod:`train.loop.publish`."""
from __future__ import annotations

import sys

from train.loop.publish import main

if __name__ == "__main__":
    sys.exit(main())
