"""Hand-written and random tree dumps for tests and benchmarks (the format of docs/formats.md).

    nodes = tree_from_spec("t1", {"0": {"0": "S", "1": "F"}, "1": "F"})

A spec maps branch labels to a subtree (dict) or a leaf code: "S" success, "F" fail,
"X" context overflow (terminal, not a finished run), "U" unfinished (no finished run yet).
A label may be given as `"<label>:<text>"` to set the node's assistant text.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DEFAULT_PROMPT = [{"role": "user", "content": "Task: solve it."}]


def tree_from_spec(task_id: str, spec: Mapping[str, Any], prompt: list[dict] | None = None) -> list[dict[str, Any]]:
    """Node records (depth-first) of a tree given as nested dicts; see the module docstring."""
    nodes: list[dict[str, Any]] = []

    def walk(sub: Mapping[str, Any], parent: str, depth: int) -> None:
        for key, child in sub.items():
            label, _, text = str(key).partition(":")
            node_id = f"{parent}-{label}" if parent else label
            terminal = isinstance(child, str) and child in "SFX"
            record = {
                "task_id": task_id, "node_id": node_id, "parent_id": parent, "depth": depth,
                "label": int(label), "temperature": 0.0 if label == "0" else 1.0,
                "assistant": text or f"Action {node_id}", "observation": f"obs after {node_id}",
                "terminal": terminal,
                "success": (child == "S") if terminal else None,
                "status": {"S": "success", "F": "fail", "X": "context_overflow"}.get(child, "") if terminal else "",
                "visits": 0, "value": None,
            }
            if depth == 1:
                record["prompt"] = list(prompt or DEFAULT_PROMPT)
            nodes.append(record)
            if isinstance(child, Mapping):
                walk(child, node_id, depth + 1)

    walk(spec, "", 1)
    return nodes


def random_tree(task_id: str, n_nodes: int, base: int = 4, max_depth: int = 8, p_success: float = 0.3,
                rng: random.Random | None = None, text_len: int = 200) -> list[dict[str, Any]]:
    """A random tree of about `n_nodes` nodes: first-step nodes, then random expansions of open leaves."""
    rng = rng or random.Random(0)
    filler = "x" * text_len
    nodes: dict[str, dict[str, Any]] = {}
    children: dict[str, int] = {}

    def add(parent: str, depth: int, label: int) -> str:
        node_id = f"{parent}-{label}" if parent else str(label)
        nodes[node_id] = {"task_id": task_id, "node_id": node_id, "parent_id": parent, "depth": depth,
                          "label": label, "temperature": 0.0 if label == 0 else 1.0,
                          "assistant": f"Action {node_id} {filler}", "observation": f"obs {node_id} {filler}",
                          "terminal": False, "success": None, "status": "", "visits": 0, "value": None}
        if depth == 1:
            nodes[node_id]["prompt"] = DEFAULT_PROMPT
        children[node_id] = 0
        return node_id

    frontier = [add("", 1, label) for label in range(base)]
    while len(nodes) < n_nodes and frontier:
        node_id = frontier.pop(rng.randrange(len(frontier)))
        node = nodes[node_id]
        if node["depth"] >= max_depth or rng.random() < 0.15:
            continue
        for label in range(children[node_id], min(base, children[node_id] + rng.randint(1, base))):
            frontier.append(add(node_id, node["depth"] + 1, label))
            children[node_id] += 1
    for node_id, node in nodes.items():  # every childless node ends a run
        if children[node_id] == 0:
            node["terminal"] = True
            node["success"] = rng.random() < p_success
            node["status"] = "success" if node["success"] else "fail"
    return list(nodes.values())


def write_jsonl(path: str | Path, records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
    """Write records as JSONL (test helper; no atomicity needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
