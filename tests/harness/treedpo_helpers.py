"""Test helpers for TreeDPO: small pairs CSVs (docs/formats.md) and LLaMA-Factory datasets made from them
with the project's own `prepare_dataset` (the same path users take)."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from densepolicy.postprocess.lf_dataset import pair_to_sharegpt
from densepolicy.postprocess.pairs import PAIR_COLUMNS

TASK = ("Solve the following math problem step by step. You can use Python code: write it between "
        "`Action:` and `End Action`, or give the final answer as `Answer: <value>`.\nProblem: {q}")


def pair_rows(tasks: dict[str, int], seed: int = 0, dataset: str = "math") -> list[dict]:
    """Pairs CSV rows: `tasks[task_id]` agent-style pairs per task (prompt = task + one code step + its
    observation; chosen = right answer, rejected = wrong answer)."""
    rng = random.Random(seed)
    rows = []
    for task_id, count in tasks.items():
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        prompt = [
            {"role": "user", "content": TASK.format(q=f"What is {a} * {b}?")},
            {"role": "assistant", "content": f"Thought: multiply the numbers.\nAction:\nprint({a} * {b})\nEnd Action"},
            {"role": "user", "content": f"Observation:\n{a * b}"},
        ]
        for k in range(count):
            rows.append({
                "task_id": task_id, "dataset": dataset, "task_type": "", "prompt": json.dumps(prompt),
                "chosen": f"Thought: the product is {a * b}.\nAnswer: {a * b}",
                "rejected": f"Thought: I will guess.\nAnswer: {a * b + k + 1}",
                "chosen_node": f"0-{k}", "rejected_node": f"1-{k}", "chosen_value": 1.0, "rejected_value": 0.0,
                "chosen_visits": 2, "rejected_visits": 2, "depth": 2, "selected": True,
            })
    return rows


def write_pairs_csv(path: Path, tasks: dict[str, int], seed: int = 0) -> Path:
    """Write a pairs CSV in the documented format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=PAIR_COLUMNS)
        writer.writeheader()
        writer.writerows(pair_rows(tasks, seed))
    return path


def tiny_pairs(n: int = 8, seed: int = 0) -> list[dict]:
    """`n` ShareGPT pairwise records (one task each), as prepare_dataset writes them."""
    rows = pair_rows({f"t{i}": 1 for i in range(n)}, seed)
    return [pair_to_sharegpt(json.loads(r["prompt"]), r["chosen"], r["rejected"]) for r in rows]


# The shared tiny DPO run's settings (tests/integration/training/conftest.py: tiny_dpo_run) over cpu_tiny: 3 steps,
# then LLaMA-Factory's evaluation on the held-out pairs `tiny_heldout`.
TINY_DPO_OVERRIDES = ["max_steps=3", "eval_dataset=tiny_heldout", "do_eval=true", "per_device_eval_batch_size=1"]


def write_dataset(dataset_dir: Path, name: str = "tiny_tree_dpo", n: int = 8, seed: int = 0,
                  via_prepare: bool = False) -> str:
    """Register `n` tiny pairs as `<dataset_dir>/<name>.json` in dataset_info.json.

    via_prepare=True goes pairs CSV -> `prepare_dataset` (tokenizer length filter, a few seconds);
    otherwise the records and the registry entry are written with lf_dataset's own helpers.
    """
    from densepolicy.postprocess.lf_dataset import dataset_info_entry, prepare_dataset, register_dataset
    from densepolicy.postprocess.config import DatasetConfig

    dataset_dir.mkdir(parents=True, exist_ok=True)
    if via_prepare:
        pairs = write_pairs_csv(dataset_dir.parent / f"{name}.pairs.csv", {f"t{i}": 1 for i in range(n)}, seed)
        prepare_dataset(pairs, DatasetConfig(cutoff_len=1024, output_dir=str(dataset_dir)), name=name,
                        show_progress=False)
    else:
        (dataset_dir / f"{name}.json").write_text(json.dumps(tiny_pairs(n, seed), indent=1))
        register_dataset(dataset_dir / "dataset_info.json", name, dataset_info_entry(name, has_system=False))
    return name


def tiny_sft_records(n: int = 8, seed: int = 0) -> list[dict]:
    """`n` multi-turn ShareGPT SFT records in the expert dataset's layout: task, code step, its observation,
    answer (two trained assistant turns, the observation turn masked)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        records.append({"conversations": [
            {"from": "human", "value": TASK.format(q=f"What is {a} * {b}?")},
            {"from": "gpt", "value": f"Action:\nprint({a} * {b})\nEnd Action"},
            {"from": "human", "value": f"Observation:\n{a * b}"},
            {"from": "gpt", "value": f"Answer: {a * b}"},
        ]})
    return records


def write_sft_dataset(dataset_dir: Path, name: str = "tiny_sft", n: int = 8, seed: int = 0) -> str:
    """Register `n` tiny multi-turn SFT records as `<dataset_dir>/<name>.json` (formatting: sharegpt)."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / f"{name}.json").write_text(json.dumps(tiny_sft_records(n, seed), indent=1))
    info = dataset_dir / "dataset_info.json"
    registry = json.loads(info.read_text()) if info.is_file() else {}
    registry[name] = {"file_name": f"{name}.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}}
    info.write_text(json.dumps(registry, indent=2))
    return name
