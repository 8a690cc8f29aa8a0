"""``python train.py --help``; the program is :mod:`mit_semseg.cli.train`."""

import sys

from mit_semseg.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
