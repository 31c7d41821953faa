"""The settings tried: one table over finished experiments (densepolicy/postprocess/settings_tried.py).

    .venv/bin/python scripts/compare_experiments.py eval_results/exp_a eval_results/exp_b [--csv FILE [--overwrite]]

Prints a Markdown table (one row per experiment and dataset: the settings that differ, the split, pairs, DPO
steps, TreeDPO vs warm start on the sampled episodes with the paired effect, its 95 % CI and p-values, and
whether the held-out task ids are the first experiment's); `--csv` also writes it as CSV. Exit 2 names a
directory that holds no experiment report, or an existing CSV without --overwrite.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from densepolicy.postprocess.settings_tried import ExperimentDirError, markdown, settings_tried
from densepolicy.results_io import OutputWriteError, write_csv_atomic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="+", help="output_dir of each finished experiment")
    parser.add_argument("--csv", help="also write the rows to this CSV")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    args = parser.parse_args(argv)
    if args.csv and Path(args.csv).exists() and not args.overwrite:
        print(f"compare_experiments: error: {args.csv} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        rows = settings_tried(args.experiments)
    except ExperimentDirError as exc:
        print(f"compare_experiments: error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print("compare_experiments: no TreeDPO-vs-warm-start comparison of sampled episodes in these experiments",
              file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.csv:
        try:
            write_csv_atomic(args.csv, list(rows[0]), rows)
        except OutputWriteError as exc:
            print(f"compare_experiments: error: {exc}", file=sys.stderr)
            return 5
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
