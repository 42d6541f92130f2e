"""``python -m metalio``: the same command line as the ``metalio`` script."""

from __future__ import annotations

import sys

from metalio.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
