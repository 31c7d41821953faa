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

from densepolicy.provenance import (FILE_NAME, Environment, ModelFingerprint, OutputRecord, TrainedDataset,
                                    TrainingRecord, digest, find_record, sha256_file, timestamp, update_record)


def _dataset(name: str, path: Path | None) -> TrainedDataset:
    """A dataset of the run: its file, hash, and (if it has one) its record and that record's `upstream`."""
    if path is None or not path.is_file():
        return TrainedDataset(name=name, file=str(path) if path else None)
    found = find_record(path)
    if found is None:
        return TrainedDataset(name=name, file=str(path), sha256=sha256_file(path))
    upstream = found.record.upstream if isinstance(found.record, OutputRecord) else ()
    return TrainedDataset(name=name, file=str(path), sha256=sha256_file(path), provenance=found.ref, upstream=upstream)


def record_trained_model(model_dir: str | os.PathLike, train_args: Mapping[str, Any],
                         config: str | os.PathLike | None = None) -> TrainingRecord:
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
        datasets.append(_dataset(name, dataset_dir / file_name if file_name else None))
    record = TrainingRecord(created=timestamp(), environment=Environment.current(),
                            config=str(config) if config else None, settings=dict(train_args),
                            settings_sha256=digest(train_args), datasets=tuple(datasets),
                            dataset_sha256=digest([(d.name, d.sha256) for d in datasets]),
                            base_model=ModelFingerprint.of(train_args.get("model_name_or_path")),
                            model=ModelFingerprint.of(out))
    update_record(out / FILE_NAME, "model", lambda _old: record)
    return record
