#!/usr/bin/env python
r"""Merge distributed results and print score tables.

    # merge the shards math.train.0.csv, math.train.1.csv, ... into math.train.None.csv
    python post_process_test_result.py --merge_distributed_result --data_dir eval_results/<method>.<model>/<run> \
        --dataset_file_name_list 'math.train.{}.csv'

    # accuracy @1..@10 (math), ALFWorld per type + macro avg, BabyAI; several files side by side
    python post_process_test_result.py --see_score --files base/math.test.None.csv trained/math.test.None.csv \
        --labels base trained

    # print what produced a result (run dir, result CSV, pairs/dataset file or model dir)
    python post_process_test_result.py --provenance eval_results/<method>.<model>/<run>/math.test.None.csv

--see_score refuses (exit 2) to put side by side results of one dataset evaluated on different task
sets, data files or env/grader versions (from the files and their provenance.json) unless
--allow_mismatch is given; then the tables are marked NOT COMPARABLE.
"""
from __future__ import annotations

from pathlib import Path

from densepolicy.postprocess.merge import merge_distributed
from densepolicy.postprocess.cli import load_postprocess_config, make_parser, run
from densepolicy.results_io import CorruptFileError, write_text_atomic
from densepolicy.postprocess.scores import build_tables, render_csv, render_markdown, render_text, score_file
from densepolicy.provenance import (IDENTITY_HEADER, ProvenanceMismatch, comparability_problems, describe,
                                    identity_rows, result_identity)


def parse_args():
    parser = make_parser(__doc__)
    parser.add_argument("--merge_distributed_result", action="store_true", help="merge shard files into <...>.None.csv")
    parser.add_argument("--see_score", action="store_true", help="print and write score tables")
    parser.add_argument("--data_dir", help="directory of the run (holds the shards and trees/)")
    parser.add_argument("--dataset_file_name_list", nargs="+", default=[],
                        help="file name templates with {} for the shard id, e.g. 'math.train.{}.csv'")
    parser.add_argument("--num_shards", type=int, help="expected number of shards, to report missing ones "
                        "(default: from the launcher's run_manifest.json)")
    parser.add_argument("--expected_tasks", help="file with one expected task id per line, to report missing tasks")
    parser.add_argument("--files", nargs="+", default=[], help="--see_score: result CSV files")
    parser.add_argument("--labels", nargs="+", default=[], help="--see_score: row label per file (default: model name)")
    parser.add_argument("--allow_mismatch", action="store_true", help="--see_score: compare results of different "
                        "task sets / data files / env versions anyway (the tables are marked)")
    parser.add_argument("--provenance", metavar="PATH", help="print the provenance record of a run directory, "
                        "result file, pairs or dataset file, or model directory")
    parser.add_argument("--output", help="--see_score: output prefix for <prefix>.csv and <prefix>.md "
                        "(default: <first file without .csv>.scores)")
    return parser.parse_args()


def _write_if_allowed(path: Path, text: str, overwrite: bool) -> str:
    if path.exists() and not overwrite and path.read_text(encoding="utf-8") != text:
        return f"kept existing {path} (differs; pass --overwrite to replace it)"
    write_text_atomic(path, text)
    return f"wrote {path}"


def see_score(args, cfg) -> None:
    files = [Path(f) for f in args.files]
    if args.data_dir:
        files += [Path(args.data_dir) / t.format("None") for t in args.dataset_file_name_list]
    if not files:
        raise ValueError("--see_score needs --files or --data_dir with --dataset_file_name_list")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"result file {f} not found (merge the shards first?)")
    if args.labels and len(args.labels) != len(files):
        raise ValueError(f"--labels has {len(args.labels)} names for {len(files)} files")
    labels = args.labels or [None] * len(files)
    scores = [score_file(f, cfg.scores, label) for f, label in zip(files, labels)]
    idents = [result_identity(s.path, s.label, s.dataset) for s in scores]
    problems = comparability_problems(idents)
    if problems and not args.allow_mismatch:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ProvenanceMismatch(f"not comparable: {problems[0][1]}{more}; pass --allow_mismatch to compare anyway")
    flagged = {dataset for dataset, _ in problems}
    for s, ident in zip(scores, idents):
        s.identity = {"eval_set_sha256": ident.eval_set, "model_fingerprint": ident.model_fingerprint,
                      "comparable": "no" if s.dataset in flagged else "yes"}
    tables = build_tables(scores, cfg.scores)
    tables.banner = [f"!! NOT COMPARABLE (--allow_mismatch): {text}" for _, text in problems]
    tables.provenance_header, tables.provenance_rows = IDENTITY_HEADER, identity_rows(idents)
    tables.notes += [f"  NOTE: no provenance.json for {i.path}: data files, env versions and model not verified"
                     for i in idents if i.record is None]
    print(render_text(tables))
    prefix = Path(args.output) if args.output else files[0].with_name(files[0].name[:-4] + ".scores")
    print(_write_if_allowed(prefix.with_name(prefix.name + ".csv"), render_csv(tables), args.overwrite))
    print(_write_if_allowed(prefix.with_name(prefix.name + ".md"), render_markdown(tables), args.overwrite))


def main() -> int:
    args = parse_args()
    cfg = load_postprocess_config(args)
    if args.provenance:
        print(describe(args.provenance))
    if not (args.merge_distributed_result or args.see_score or args.provenance):
        raise ValueError("nothing to do: pass --merge_distributed_result, --see_score and/or --provenance")
    if args.merge_distributed_result:
        if not args.data_dir or not args.dataset_file_name_list:
            raise ValueError("--merge_distributed_result needs --data_dir and --dataset_file_name_list")
        expected = None
        if args.expected_tasks:
            expected = [line.strip() for line in Path(args.expected_tasks).read_text().splitlines() if line.strip()]
        for template in args.dataset_file_name_list:
            try:
                report = merge_distributed(args.data_dir, template, num_shards=args.num_shards,
                                           expected_tasks=expected)
            except CorruptFileError as exc:
                raise CorruptFileError(exc.path, exc.line, exc.problem + " -- nothing was moved or written; "
                                       "a killed worker repairs its shard when re-run with the same command") from None
            print(report.summary())
    if args.see_score:
        see_score(args, cfg)
    return 0


if __name__ == "__main__":
    run(main)
