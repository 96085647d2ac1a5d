"""``python -m fastpg``: the ``fastpg`` command."""

import sys

from fastpg.cli import main

sys.exit(main())
