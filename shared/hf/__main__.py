import sys

from shared.hf import main

sys.exit(main())
