"""``python eval_multipro.py --help``; the program is :mod:`mit_semseg.cli.eval_multipro`."""

import sys

from mit_semseg.cli.launch import eval_multipro as main  # imports the program under a Ctrl-C guard

if __name__ == "__main__":
    sys.exit(main())
