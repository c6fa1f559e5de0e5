"""``python -m twin_encoder``: the ``twin-encoder`` command without installing it."""

import sys

from twin_encoder.cli import main

sys.exit(main())
