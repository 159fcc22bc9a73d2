"""``python -m rdc_lib.cli``: the ``rdc`` command."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
