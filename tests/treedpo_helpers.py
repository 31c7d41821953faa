"""Test helpers for TreeDPO: a tiny pairwise dataset in the documented ShareGPT format (docs/formats.md)."""
from __future__ import annotations

import json
import random
from pathlib import Path

TASK = ("Solve the following math problem step by step. You can use Python code: write it between "
        "`Action:` and `End Action`, or give the final answer as `Answer: <value>`.\nProblem: {q}")


def tiny_pairs(n: int = 8, seed: int = 0) -> list[dict]:
    """`n` agent-style preference records: prompt = task + one code step + its observation."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        conversations = [
            {"from": "human", "value": TASK.format(q=f"What is {a} * {b}?")},
            {"from": "gpt", "value": f"Thought: multiply the numbers.\nAction:\nprint({a} * {b})\nEnd Action"},
            {"from": "human", "value": f"Observation:\n{a * b}"},
        ]
        records.append({
            "conversations": conversations,
            "chosen": {"from": "gpt", "value": f"Thought: the product is {a * b}.\nAnswer: {a * b}"},
            "rejected": {"from": "gpt", "value": f"Thought: I will guess.\nAnswer: {a * b + rng.randint(1, 9)}"},
        })
    return records


def write_dataset(dataset_dir: Path, name: str = "tiny_tree_dpo", n: int = 8, seed: int = 0) -> str:
    """Write `<name>.json` and register it in `<dataset_dir>/dataset_info.json` as docs/formats.md says."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / f"{name}.json").write_text(json.dumps(tiny_pairs(n, seed), indent=1))
    info_path = dataset_dir / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = {"file_name": f"{name}.json", "formatting": "sharegpt", "ranking": True,
                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}
    info_path.write_text(json.dumps(info, indent=2))
    return name
