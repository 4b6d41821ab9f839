"""`python -m lasro ...`, the same as the `lasro` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
