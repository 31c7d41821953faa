#!/usr/bin/env python
"""TreeDPO on CPU: wall time of `TreeDPO/train.py cpu_tiny` (full DPO and LoRA + merge), side by side.

    .venv/bin/python benchmarks/bench_treedpo.py [--steps 4] [--pairs 16]

Each run trains the embedded SmolLM2-135M-Instruct for `steps` DPO steps (batch 2, fp32) on `pairs`
agent-style pairs written with prepare_dataset, then exports a servable model. Columns:
- `train_runtime_s`: LLaMA-Factory's own training-loop time (all_results.json), `s_per_step` = that / steps;
- `train_wall_s`: `llamafactory-cli train` including start-up, model load, tokenisation and saving;
- `export_s`: the LoRA merge (`llamafactory-cli export`); `total_s`: train.py end to end (template check too);
- `max_rss_gb`: peak resident memory of the largest child process so far (cumulative across rows).
Prints a table and writes benchmarks/results/treedpo_train.csv (+ the runs' loss/reward plots as
benchmarks/results/treedpo_{full,lora}_dpo_{loss,rewards}.png).
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from densepolicy.training.train import train  # noqa: E402
from tests.harness.treedpo_helpers import write_dataset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "treedpo_train.csv"
RUNS = {
    "full DPO": [],
    "LoRA DPO (r 8, all linear) + merge": ["finetuning_type=lora", "lora_rank=8", "lora_target=all",
                                          "learning_rate=5e-5"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_treedpo_") as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, "bench_pairs", n=args.pairs, via_prepare=True)
        for label, overrides in RUNS.items():
            start = time.perf_counter()
            result = train("cpu_tiny", dataset="bench_pairs", dataset_dir=data, output_dir=Path(tmp) / label.split()[0],
                           overrides=[f"max_steps={args.steps}", *overrides], progress=False)
            total = time.perf_counter() - start
            tag = "lora" if overrides else "full"
            for plot in result.plots:  # sample curves: benchmarks/results/treedpo_<full|lora>_dpo_{loss,rewards}.png
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(plot, RESULTS.parent / f"treedpo_{tag}_{plot.name}")
            runtime = float(result.metrics.get("train_runtime", "nan"))
            rows.append({"run": label, "steps": args.steps, "pairs": args.pairs,
                         "train_runtime_s": round(runtime, 1), "s_per_step": round(runtime / args.steps, 2),
                         "train_wall_s": round(result.train_seconds, 1), "export_s": round(result.export_seconds, 1),
                         "total_s": round(total, 1),
                         "max_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
                         "train_loss": round(float(result.metrics.get("train_loss", "nan")), 4)})
    load = os.getloadavg()[0]
    columns = list(rows[0])
    print(f"cpu_tiny on {os.cpu_count()} CPUs (1-min load average at the end: {load:.1f})")
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns + ["load_avg_1min"])
        writer.writeheader()
        writer.writerows({**row, "load_avg_1min": round(load, 1)} for row in rows)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
