"""Stand-in evaluation command for the density-study test: writes two result shards (docs/formats.md
shard CSV) for DATASET into EVAL_DIR, with outcomes derived from MODEL_DIR's config.json, plus
expected.json = accuracy @4/@10 counted directly from those rows (what the study must report).

  python tests/harness/density_eval_stub.py MODEL_DIR DATASET EVAL_DIR
"""
import csv
import json
import sys
from pathlib import Path

model_dir, dataset, eval_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
config = json.loads((model_dir / "config.json").read_text())
seed = config["hidden_size"] + config["num_hidden_layers"]
rows = []
for i in range(12):
    turns = (seed * (i + 3)) % 13  # 0 = unsolved, else solved at that attempt
    rows.append({"task_id": str(i), "dataset": dataset, "split": "test", "status": "success" if turns else "fail",
                 "score": 1.0 if turns else 0.0, "turns": turns or 10})
for shard, part in enumerate((rows[:5], rows[5:])):
    with open(eval_dir / f"{dataset}.test.{shard}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(part)
expected = {k: round(100.0 * sum(1 for r in rows if r["score"] and r["turns"] <= k) / len(rows), 2) for k in (4, 10)}
(eval_dir / "expected.json").write_text(json.dumps(expected))
