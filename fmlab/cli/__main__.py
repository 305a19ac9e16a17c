"""`python -m fmlab.cli`: the same as the `fmlab` command (used under torchrun)."""

import sys

from . import main

sys.exit(main())
