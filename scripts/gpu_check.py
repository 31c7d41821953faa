"""`make gpu-check`: a few-minute self-check of a new GPU box (see densepolicy/gpu_check.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from densepolicy.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
