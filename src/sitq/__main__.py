"""``python -m sitq``: the same program as the ``sitq`` command."""

import sys

from sitq.cli import main

sys.exit(main())
