"""Build the expert SFT dataset for the warm start (configs/expert_data.yaml).

    .venv/bin/python scripts/build_expert_data.py [key=value ...] [--overwrite]
    e.g. scripts/build_expert_data.py gsm8k=300 babyai=300 alfworld=100 name=expert_sft

Writes <dataset_dir>/<name>.json (LLaMA-Factory ShareGPT, multi-turn), registers it in
<dataset_dir>/dataset_info.json, writes <name>.summary.json and prints per-env counts and token lengths.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densepolicy.config import ConfigError, describe
from densepolicy.results_io import OutputExistsError
from densepolicy.training.expert_data import ExpertDataConfig, build_expert_dataset, load_expert_data_config


def main(argv: list[str]) -> int:
    """Parse `key=value` overrides and `--overwrite`, then build."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__ + "\nKeys:\n" + describe(ExpertDataConfig))
        return 0
    overwrite = "--overwrite" in argv
    try:
        cfg = load_expert_data_config([a for a in argv if a != "--overwrite"])
        build_expert_dataset(cfg, overwrite=overwrite)
    except (ConfigError, OutputExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
