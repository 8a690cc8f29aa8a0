"""``python test.py --help``; the program is :mod:`mit_semseg.cli.test`."""

import sys

from mit_semseg.cli.test import main

if __name__ == "__main__":
    sys.exit(main())
