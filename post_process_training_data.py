#!/usr/bin/env python
r"""Extract DPO pairs from tree dumps and combine them under per-task budgets.

    # pairs of one merged tree run (seed form; writes <data_dir>/math/math.train.pairs.csv + histogram)
    python post_process_training_data.py --process_result --data_dir eval_results/<method>.<model>/<run> \
        --dataset_file_name_list 'math.train.{}.csv' --data_sub_dir math --dataset_file_name math.train.None.csv
    # simple form, plus a picture of one task's tree
    python post_process_training_data.py --process_result --tree_file <run>/trees/math.train.None.jsonl \
        --output pairs.csv --plot_tree 17

    # combine every *.pairs.csv under eval_results/ with the budgets of configs/postprocess.yaml
    python post_process_training_data.py --merge_all_pairs --data_dir eval_results merge_all_pairs.budgets.math.tasks=694
"""
from __future__ import annotations

from pathlib import Path

from densepolicy.config import to_dict
from densepolicy.postprocess.budget import find_pair_files, merge_all_pairs
from densepolicy.postprocess.pairs import extract_pairs_file, extraction_paths, iter_tree_tasks, read_task_meta, task_pairs
from densepolicy.paths import PROJECT_ROOT
from densepolicy.postprocess.plots import pairs_histogram, plot_tree
from densepolicy.postprocess.cli import load_postprocess_config, make_parser, run
from densepolicy.results_io import ensure_new
from densepolicy.postprocess.output_records import record_pairs


def parse_args():
    parser = make_parser(__doc__)
    parser.add_argument("--process_result", action="store_true", help="tree dump -> pairs CSV (+ histogram PNG)")
    parser.add_argument("--merge_all_pairs", action="store_true", help="combine pairs CSVs under per-task budgets")
    parser.add_argument("--plot_tree", nargs="+", default=[], metavar="TASK_ID", help="draw these tasks' trees (PNG)")
    parser.add_argument("--data_dir", help="run directory (--process_result) or root searched for *.pairs.csv "
                        "(--merge_all_pairs, default <project>/eval_results)")
    parser.add_argument("--dataset_file_name_list", nargs="+", default=[], help="shard templates, e.g. 'math.train.{}.csv'")
    parser.add_argument("--dataset_file_name", help="merged result file, e.g. math.train.None.csv")
    parser.add_argument("--data_sub_dir", help="output sub-directory of --data_dir (default: pairs)")
    parser.add_argument("--tree_file", help="tree dump JSONL (instead of --data_dir/--dataset_file_name)")
    parser.add_argument("--pairs_files", nargs="+", default=[], help="--merge_all_pairs: explicit inputs")
    parser.add_argument("--output", help="output file (pairs CSV or merged pairs CSV)")
    return parser.parse_args()


def process_result(args, cfg, template: str | None) -> None:
    paths = extraction_paths(args.data_dir, args.dataset_file_name, template, args.data_sub_dir,
                             args.tree_file, args.output)
    rule = cfg.pairs.rule()
    if args.process_result:
        if cfg.pairs.histogram:
            ensure_new(paths.histogram, args.overwrite)
        summary = extract_pairs_file(paths.tree, paths.output, rule, read_task_meta(paths.results_csv),
                                     default_dataset=paths.dataset, overwrite=args.overwrite)
        print(summary.text())
        record_pairs(paths.output, [paths.tree, paths.results_csv], to_dict(cfg.pairs))
        if cfg.pairs.histogram:
            picture = pairs_histogram([t.selected for t in summary.tasks], paths.histogram,
                                      title=f"{paths.output.name}: selected pairs per task")
            print(f"histogram: {picture}")
    wanted = set(args.plot_tree)
    for task_id, nodes in iter_tree_tasks(paths.tree) if wanted else ():
        if task_id in wanted:
            wanted.discard(task_id)
            stats, pairs, summary = task_pairs(nodes, rule)
            target = ensure_new(paths.tree_picture(task_id), args.overwrite)
            plot_tree(stats, pairs, target, rule, title=f"task {task_id}: {summary.nodes} nodes, {summary.runs} runs")
            print(f"tree picture: {target}")
            if not wanted:
                break
    if wanted:
        raise ValueError(f"task id(s) not in {paths.tree}: {', '.join(sorted(wanted))}")


def main() -> int:
    args = parse_args()
    cfg = load_postprocess_config(args)
    if not (args.process_result or args.merge_all_pairs or args.plot_tree):
        raise ValueError("nothing to do: pass --process_result, --plot_tree and/or --merge_all_pairs")
    if args.process_result or args.plot_tree:
        templates = args.dataset_file_name_list or [None]
        if args.dataset_file_name or args.tree_file:
            templates = templates[:1]
        for template in templates:
            process_result(args, cfg, template)
    if args.merge_all_pairs:
        root = Path(args.data_dir) if args.data_dir else PROJECT_ROOT / "eval_results"
        inputs = [Path(p) for p in args.pairs_files] or find_pair_files(root)
        if not inputs:
            raise FileNotFoundError(f"no *.pairs.csv files under {root}")
        report = merge_all_pairs(inputs, args.output, cfg.merge_all_pairs, output_dir=root, overwrite=args.overwrite)
        record_pairs(report.output, inputs, to_dict(cfg.merge_all_pairs))
        print(report.text())
    return 0


if __name__ == "__main__":
    run(main)
