"""``python -m mit_semseg.app``: see :mod:`mit_semseg.app.main`."""

import sys

from mit_semseg.app.main import main

sys.exit(main())
