"""`make demo`: the whole loop on the embedded model (see densepolicy/demo.py, configs/demo.yaml)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from densepolicy.demo import main

if __name__ == "__main__":
    sys.exit(main())
