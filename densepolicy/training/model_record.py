"""The trained model's provenance record: `<model dir>/provenance.json`, key "model".

    record_trained_model(model_dir, train_args, config)   # TreeDPO training, node 0, after the export

It holds the effective LLaMA-Factory arguments, each dataset file with its hash and its own record
(and that record's `upstream`), and the fingerprints of the base model and of the result.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from densepolicy.provenance import (FILE_NAME, digest, environment, find_record, model_fingerprint, sha256_file,
                                    timestamp, update_record)


def record_trained_model(model_dir: str | os.PathLike, train_args: Mapping[str, Any],
                         config: str | os.PathLike | None = None) -> dict[str, Any]:
    """Record a trained model directory: effective LLaMA-Factory arguments, dataset files with their
    provenance, base-model and result-model fingerprints (record key "model")."""
    out = Path(model_dir)
    dataset_dir = Path(str(train_args.get("dataset_dir", ".")))
    try:
        registry = json.loads((dataset_dir / "dataset_info.json").read_text())
    except (OSError, json.JSONDecodeError):
        registry = {}
    datasets = []
    for name in [n.strip() for n in str(train_args.get("dataset", "")).split(",") if n.strip()]:
        file_name = (registry.get(name) or {}).get("file_name")
        path = dataset_dir / file_name if file_name else None
        entry: dict[str, Any] = {"name": name, "file": str(path) if path else None, "sha256": None, "provenance": None}
        if path is not None and path.is_file():
            entry["sha256"] = sha256_file(path)
            found = find_record(path)
            if found is not None:
                entry["provenance"] = f"{found[0]}#{found[1]}"
                entry["upstream"] = found[2].get("upstream")
        datasets.append(entry)
    record = {"stage": "training", "file": "model", "created": timestamp(), "environment": environment(),
              "config": str(config) if config else None, "settings": dict(train_args),
              "settings_sha256": digest(train_args), "datasets": datasets,
              "dataset_sha256": digest([(d["name"], d["sha256"]) for d in datasets]),
              "base_model": model_fingerprint(train_args.get("model_name_or_path")),
              "model": model_fingerprint(out)}
    return update_record(out / FILE_NAME, "model", lambda _old: record)
