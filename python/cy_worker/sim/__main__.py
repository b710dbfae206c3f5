"""Entry point of `python -m cy_worker.sim`."""

import sys

from .cli import main

sys.exit(main())
