"""``python -m xtf_kernels`` runs the ``xtf`` command line."""

import sys

from .cli import main

sys.exit(main())
