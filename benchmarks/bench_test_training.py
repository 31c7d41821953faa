#!/usr/bin/env python
"""What one test-suite training run costs: the shared tiny DPO run of the integration tests (cpu_tiny, 3 full-DPO
steps on 4 tiny pairs, then LLaMA-Factory's evaluation on 3 held-out pairs) on the embedded SmolLM2-135M-Instruct
against the tiny random-weight Llama of `densepolicy.testing.tiny_model` (hidden 128, 2 layers, the same tokenizer
and chat template), side by side in one run, in the order tiny, 135M, tiny again (so a change in machine load shows).

    .venv/bin/python benchmarks/bench_test_training.py [--repeats 1]

`wall_s` and `cpu_s` (user + system of this process and its waited-for children, i.e. the LLaMA-Factory
process) per run; `cpu_vs_135m` = that row's CPU over the 135M row's. Prints a table and writes
benchmarks/results/test_training.csv. This is why the suite's DPO, LoRA, multi-node, Slurm and density-study
trainings use the tiny model (tests/conftest.py `tiny_llama`), while `cpu_sft` and the warm start train the real one.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import print_and_write  # noqa: E402

from densepolicy.paths import embedded_model_dir  # noqa: E402
from densepolicy.testing.tiny_model import build_tiny_model  # noqa: E402
from densepolicy.training.train import train  # noqa: E402
from tests.harness.treedpo_helpers import TINY_DPO_OVERRIDES, write_dataset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "test_training.csv"


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished, waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (tiny, 135M, tiny)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_test_training_") as tmp:
        root = Path(tmp)
        write_dataset(root / "data", "tiny_tree_dpo", n=4, via_prepare=True)
        write_dataset(root / "data", "tiny_heldout", n=3, seed=1)
        models = {"tiny Llama (hidden 128, 2 layers)": build_tiny_model(root / "tiny_model"),
                  "SmolLM2-135M-Instruct": embedded_model_dir()}
        order = [*models][:1] + [*models][1:] + [*models][:1]
        for repeat in range(args.repeats):
            for i, label in enumerate(order):
                wall0, cpu0 = time.monotonic(), cpu_seconds()
                train("cpu_tiny", dataset="tiny_tree_dpo", dataset_dir=root / "data", model=models[label],
                      output_dir=root / f"run{repeat}_{i}", overrides=TINY_DPO_OVERRIDES, progress=False)
                rows.append({"repeat": repeat, "model": label, "wall_s": round(time.monotonic() - wall0, 1),
                             "cpu_s": round(cpu_seconds() - cpu0, 1)})
    real = [r["cpu_s"] for r in rows if r["model"] == "SmolLM2-135M-Instruct"]
    for r in rows:
        r["cpu_vs_135m"] = round(r["cpu_s"] / (sum(real) / len(real)), 3)
    print_and_write(rows, RESULTS, "cpu_tiny DPO run of the test suite (3 steps + held-out evaluation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
