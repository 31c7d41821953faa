"""`make experiment`: base vs warm-started vs warm-started + TreeDPO on the same held-out tasks
(see densepolicy/experiment.py, configs/experiment.yaml)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from densepolicy.experiment import main

if __name__ == "__main__":
    sys.exit(main())
