"""``python -m shared.hf FOLDER OUT.safetensors`` (also ``twin-encoder convert``)."""

import sys

from shared.hf import main

sys.exit(main())
