"""``python -m services.cli``: the ``vor`` command, as the process supervisor starts it."""

import sys

from services.cli.main import main

sys.exit(main())
