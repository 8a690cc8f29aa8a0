"""``python eval_multipro.py --help``; the program is :mod:`mit_semseg.cli.eval_multipro`."""

import sys

from mit_semseg.cli.eval_multipro import main

if __name__ == "__main__":
    sys.exit(main())
