"""``python -m batchnorm``: runs the command line of :mod:`batchnorm.cli`."""

import sys

from batchnorm.cli.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
