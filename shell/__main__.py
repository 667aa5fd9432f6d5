"""``python -m shell``: the same as the ``aegis-shell`` script."""

import sys

from .app import main

sys.exit(main())
