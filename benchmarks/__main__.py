"""``python -m benchmarks``: run from the repository root, no installation needed."""

from benchmarks.cli import main

raise SystemExit(main())
