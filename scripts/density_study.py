"""Density-scaling study: a fixed DPO pair budget over N tasks, trained and evaluated for every N.

  .venv/bin/python scripts/density_study.py --config configs/density_demo.yaml pairs_file=<pairs CSV> [key=value ...]
  .venv/bin/python scripts/density_study.py --config configs/density_paper.yaml pairs_file=<merged_all_pairs CSV>

Writes <output_dir>/density_study.csv (one row per N: tasks, pairs, density, train loss, accuracy @k) and
density_study.png (accuracy @k against tree density = reference_tasks / N). Re-running resumes.
The evaluation step is pluggable (evaluation.kind = launcher | command | callable | none); with the
default `launcher` it runs, per model and dataset:
  ./distributed_test.sh <output_dir>/models/density_N<N> <dataset> codeact_agent <procs_per_gpu> <tmux_start_id> \
      wait=true output_dir=<output_dir>/eval/N<N>/<dataset> <launcher_args...>
and scores the result CSVs (accuracy @k as post_process_test_result.py --see_score).
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densepolicy.config import ConfigError, describe, load_config
from densepolicy.training.density import DensityStudyConfig, run_study
from densepolicy.training.train import TrainingError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog="keys:\n" + describe(DensityStudyConfig),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/density_demo.yaml", help="study YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg = load_config(DensityStudyConfig, args.config, args.overrides)
        rows = run_study(cfg)
    except (ConfigError, TrainingError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = ["tasks", "pairs", "density", "train_loss"] + [k for k in rows[0] if k.startswith("acc_")]
    print("\t".join(keys))
    for row in rows:
        print("\t".join(str(row.get(k, "")) for k in keys))
    print(f"results: {Path(cfg.output_dir) / 'density_study.csv'}  figure: {Path(cfg.output_dir) / 'density_study.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
