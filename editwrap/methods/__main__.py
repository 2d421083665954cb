"""``python -m editwrap.methods``: the registered methods (see :mod:`editwrap.methods.catalog`)."""
import sys

from .catalog import main

sys.exit(main())
