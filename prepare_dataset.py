#!/usr/bin/env python
r"""Write a LLaMA-Factory pairwise dataset (ShareGPT) from a pairs CSV and register it.

    # newest merged_all_pairs*.csv under eval_results/ -> TreeDPO/data/tree_dpo.<...>.json + dataset_info.json
    python prepare_dataset.py
    # explicit input, name, tokenizer for the length filter, and 50% extra pairs from another local dataset
    python prepare_dataset.py --pairs eval_results/merged_all_pairs.math-22331-2334.csv --name tree_dpo_math \
        --model models/SmolLM2-135M-Instruct --mix other_pairs.json:0.5 dataset.cutoff_len=2048
"""
from __future__ import annotations

from pathlib import Path

from densepolicy.postprocess.budget import MERGED_PREFIX
from densepolicy.postprocess.lf_dataset import prepare_dataset
from densepolicy.paths import PROJECT_ROOT
from densepolicy.postprocess.cli import load_postprocess_config, make_parser, run


def parse_args():
    parser = make_parser(__doc__)
    parser.add_argument("--pairs", help="pairs CSV (default: newest merged_all_pairs*.csv under --search_dir)")
    parser.add_argument("--search_dir", default=str(PROJECT_ROOT / "eval_results"),
                        help="where to look for the default input (default: <project>/eval_results)")
    parser.add_argument("--name", help="dataset name in dataset_info.json (default: tree_dpo.<input name>)")
    parser.add_argument("--model", help="tokenizer for the length filter (configs/models.yaml name or model directory); "
                        "same as dataset.model=...")
    parser.add_argument("--cutoff_len", type=int, help="token cutoff; same as dataset.cutoff_len=...")
    parser.add_argument("--output_dir", help="LLaMA-Factory data dir; same as dataset.output_dir=...")
    parser.add_argument("--allow_empty", action="store_true",
                        help="write and register the dataset even if it has no pairs (refused by default)")
    parser.add_argument("--mix", nargs="+", default=[], metavar="SOURCE:RATIO",
                        help="add ratio x (our pairs) records of a local pairwise dataset (JSON path or registered name)")
    return parser.parse_args()


def parse_mix(specs: list[str]) -> list[tuple[str, float]]:
    out = []
    for spec in specs:
        source, sep, ratio = spec.rpartition(":")
        try:
            value = float(ratio)
        except ValueError:
            value = -1.0
        if not sep or not source or value < 0:
            raise ValueError(f"--mix {spec!r} must be SOURCE:RATIO with a ratio >= 0")
        out.append((source, value))
    return out


def main() -> int:
    args = parse_args()
    for flag, key in (("model", "dataset.model"), ("cutoff_len", "dataset.cutoff_len"), ("output_dir", "dataset.output_dir")):
        if getattr(args, flag) is not None:
            args.overrides.append(f"{key}={getattr(args, flag)}")
    cfg = load_postprocess_config(args)
    pairs = Path(args.pairs) if args.pairs else None
    if pairs is None:
        found = sorted(Path(args.search_dir).rglob(f"{MERGED_PREFIX}*.csv"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"no {MERGED_PREFIX}*.csv under {args.search_dir}; pass --pairs "
                                    "(run post_process_training_data.py --merge_all_pairs first)")
        pairs = found[-1]
        print(f"input: {pairs}")
    if not pairs.is_file():
        raise FileNotFoundError(f"pairs file {pairs} not found")
    report = prepare_dataset(pairs, cfg.dataset, name=args.name, mix=parse_mix(args.mix), overwrite=args.overwrite,
                             allow_empty=args.allow_empty)
    print(report.text())
    return 0


if __name__ == "__main__":
    run(main)
