"""``python -m crforge.cli``: the ``crforge`` command."""

import sys

from crforge.cli import main

sys.exit(main())
