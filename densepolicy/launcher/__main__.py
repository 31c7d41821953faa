"""`python -m densepolicy.launcher ...` = `./distributed_test.sh ...`."""
import sys

from densepolicy.launcher.cli import main

sys.exit(main())
