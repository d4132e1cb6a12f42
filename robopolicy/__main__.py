"""``python -m robopolicy``: the same as the ``robopolicy`` command."""

import sys

from robopolicy.cli import main

sys.exit(main())
