"""``python -m profit_edu.cli``: the same as the ``profit-edu`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
