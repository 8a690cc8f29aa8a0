"""``python test.py --help``; the program is :mod:`mit_semseg.cli.test`."""

import sys

from mit_semseg.cli.launch import test as main  # imports the program under a Ctrl-C guard

if __name__ == "__main__":
    sys.exit(main())
