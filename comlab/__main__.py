"""``python -m comlab``: the ``comlab`` command."""

import sys

from .cli import main

sys.exit(main())
