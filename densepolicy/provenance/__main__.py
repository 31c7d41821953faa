"""`python -m densepolicy.provenance PATH...`: print the provenance record(s) at each PATH."""
import sys

from densepolicy.provenance.describe import main

sys.exit(main())
