"""``python -m mlff_export.cli``: the same as the ``mlff-export`` console script."""

import sys

from mlff_export.cli import main

sys.exit(main())
