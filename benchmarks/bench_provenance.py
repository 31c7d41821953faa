#!/usr/bin/env python
"""What provenance costs a worker: hashing data files and model weights cold vs from the hash cache.

    .venv/bin/python benchmarks/bench_provenance.py [--repeats 3]

Rows (median of `--repeats`):
- `model fingerprint`: config, tokenizer and weight files of the embedded SmolLM2-135M-Instruct.
- `data files <env>`: the files `Env.data_files()` reports (GSM8K train: one JSONL; ALFWorld valid_unseen:
  its game files + archive).
- `environment()`: git commit/dirty + package versions (once per process).
`cold` = empty hash cache (every byte hashed), `cached` = a new process with the on-disk cache
(stat only), `in-process` = the same process again. Uses a temporary cache directory.
Prints a table and writes benchmarks/results/provenance.csv.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from densepolicy import provenance  # noqa: E402
from densepolicy.provenance import hashing  # noqa: E402
from densepolicy.paths import embedded_model_dir  # noqa: E402
from benchmarks.results_table import print_and_write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "provenance.csv"


def median_time(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cases() -> list[tuple[str, list[Path], object]]:
    """(name, files, function) per row; the function computes the record."""
    from envs import load_env

    model = embedded_model_dir()
    out = [("model fingerprint (SmolLM2-135M)", [p for p in model.iterdir() if p.is_file()],
            lambda: provenance.model_fingerprint(model))]
    for name, split in (("gsm8k", "train"), ("alfworld", "valid_unseen")):
        env = load_env(name, split=split)
        files = provenance.env_data_files(env)
        out.append((f"data files {name}/{split}", list(files.values()),
                    lambda files=files: provenance.data_files_record(files)))
        env.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DENSEPOLICY_CACHE_DIR"] = tmp  # ALFWorld games are unpacked here too (once)

        def forget_all() -> None:
            hashing._memo.clear()
            provenance.hash_cache_file().unlink(missing_ok=True)

        for name, files, fn in cases():
            size = sum(Path(f).stat().st_size for f in files) / 1e6
            cold = median_time(fn, args.repeats, before=forget_all)
            disk = median_time(fn, args.repeats, before=hashing._memo.clear)
            memo = median_time(fn, args.repeats)
            rows.append({"what": name, "files": len(files), "MB": round(size, 1), "cold_s": round(cold, 3),
                         "cached_s": round(disk, 4), "in_process_s": round(memo, 4),
                         "cold_over_cached": round(cold / disk, 1) if disk else ""})

        def forget_env() -> None:
            for cached in (provenance.git_state, provenance.package_versions, provenance.serve_venv_versions):
                cached.cache_clear()
        first = median_time(provenance.environment, args.repeats, before=forget_env)
        rows.append({"what": "environment() (git + packages)", "files": "", "MB": "", "cold_s": round(first, 3),
                     "cached_s": "", "in_process_s": round(median_time(provenance.environment, args.repeats), 4),
                     "cold_over_cached": ""})

    print_and_write(rows, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
