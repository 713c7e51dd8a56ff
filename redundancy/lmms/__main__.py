"""``python -m redundancy.lmms {eval,export} ...`` (see :mod:`redundancy.lmms.cli`)."""

import sys

from .cli import main

sys.exit(main())
