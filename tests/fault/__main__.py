"""`python -m tests.fault`: a seeded fault run against real nodes, checked for linearizability."""

import sys

from .run import main

sys.exit(main())
