"""``python train.py --help``; the program is :mod:`mit_semseg.cli.train`."""

import sys

from mit_semseg.cli.launch import train as main  # imports the program under a Ctrl-C guard

if __name__ == "__main__":
    sys.exit(main())
