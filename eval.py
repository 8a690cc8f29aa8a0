"""``python eval.py --help``; the program is :mod:`mit_semseg.cli.eval`."""

import sys

from mit_semseg.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
