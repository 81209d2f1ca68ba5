"""``python -m sparkeras``: the same as the ``sparkeras`` command."""
import sys

from .cli import main

sys.exit(main())
