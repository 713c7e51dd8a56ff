"""``python -m analysis [results/<sweep>]``: the figures and FINDINGS.md of a results folder."""

import sys

from .figures import main

if __name__ == "__main__":
    sys.exit(main())
