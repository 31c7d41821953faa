"""Provenance records of post-processing: the merge's stamp on the run record, pairs CSVs, LLaMA-Factory datasets.

    merged_columns(run_dir, "gsm8k.test.None.csv", task_ids)    # the merge: columns for every merged row
    record_pairs(pairs_csv, inputs, settings)                    # --process_result / --merge_all_pairs
    record_dataset(dataset_json, pairs_csv, settings, sources)   # prepare_dataset -> <name>.provenance.json

Pairs and dataset records hash their inputs and name each input's own record (`upstream`); a
dataset's record lives beside it in `<name>.provenance.json` (the data dir holds many datasets).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from densepolicy.provenance import (FILE_NAME, DataFiles, DatasetRecord, Environment, MergedStamp, ModelFingerprint,
                                    OutputFile, PairsRecord, Record, SamplingRecord, dataset_provenance_path, digest,
                                    read_records, sha256_file, task_set_sha256, timestamp, update_record, upstream_summary)
from densepolicy.serving.models import resolve_model

MERGED_COLUMNS = ("eval_set_sha256", "model_fingerprint")
"""Columns the merge adds to every row of a merged result CSV."""


def merged_columns(data_dir: str | os.PathLike, merged_name: str, task_ids: Iterable[str]) -> dict[str, str]:
    """The MERGED_COLUMNS values of a merged result (eval-set hash of its tasks, the run's model
    fingerprint), also stored in the run record under `merged`. Empty fingerprint without a record."""
    ids = list(task_ids)
    prov_file = Path(data_dir) / FILE_NAME
    record = read_records(prov_file).get(merged_name)
    run = record if isinstance(record, SamplingRecord) else None
    columns = {"eval_set_sha256": task_set_sha256(ids),
               "model_fingerprint": (run.model.fingerprint or "") if run and run.model else ""}
    if run is not None:
        planned = run.eval_set.sha256 if run.eval_set else None
        merged = MergedStamp(file=merged_name, rows=len(ids), eval_set_sha256=columns["eval_set_sha256"],
                             complete=columns["eval_set_sha256"] == planned, merged_at=timestamp())

        def stamp(old: Record | None) -> Record:
            return dataclasses.replace(old if isinstance(old, SamplingRecord) else run, merged=merged)
        update_record(prov_file, merged_name, stamp)
    return columns


def _output_fields(output: Path, inputs: Sequence[Path], settings: Mapping[str, Any]) -> dict[str, Any]:
    """What pairs and dataset records share: the output file, its inputs (hashes, their own records), settings."""
    return {"file": output.name, "created": timestamp(), "environment": Environment.current(),
            "settings": dict(settings), "settings_sha256": digest(settings), "data_files": DataFiles.of(inputs),
            "output": OutputFile(path=str(output.resolve()), sha256=sha256_file(output), size=output.stat().st_size),
            "upstream": tuple(upstream_summary(p) for p in inputs)}


def record_pairs(output: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                 settings: Mapping[str, Any]) -> PairsRecord:
    """Record a pairs CSV (`--process_result`: inputs = tree dump + result CSV; `--merge_all_pairs`:
    inputs = pairs CSVs) in `provenance.json` beside it."""
    output = Path(output)
    record = PairsRecord(**_output_fields(output, [Path(p) for p in inputs if p], settings))
    update_record(output.parent / FILE_NAME, output.name, lambda _old: record)
    return record


def record_dataset(dataset_json: str | os.PathLike, inputs: Sequence[str | os.PathLike], settings: Mapping[str, Any],
                   tokenizer_model: str | os.PathLike | None = None) -> DatasetRecord:
    """Record a LLaMA-Factory dataset file (inputs: the pairs CSV and any mixed-in sources)."""
    output = Path(dataset_json)
    tokenizer = _model_dir(tokenizer_model) if tokenizer_model is not None else None
    record = DatasetRecord(**_output_fields(output, [Path(p) for p in inputs], settings),
                           tokenizer=ModelFingerprint.of(tokenizer, weights=False) if tokenizer else None)  # length filter
    update_record(dataset_provenance_path(output), output.name, lambda _old: record)
    return record


def _model_dir(model: str | os.PathLike) -> Path | None:
    """A model directory, or a name of configs/models.yaml ('' = the default); None if unresolvable."""
    if str(model) and Path(model).is_dir():
        return Path(model)
    try:
        return Path(resolve_model(str(model) or None).path)
    except Exception:  # noqa: BLE001 - an unknown tokenizer must not fail the stage; recorded as null
        return None
