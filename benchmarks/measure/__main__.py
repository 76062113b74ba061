"""``python -m benchmarks.measure``: see :mod:`benchmarks.measure.cli`."""

import sys

from benchmarks.measure.cli import main

if __name__ == "__main__":
    sys.exit(main())
