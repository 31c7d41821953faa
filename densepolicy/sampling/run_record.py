"""The sampling run's provenance record: each worker writes or joins the record of its run's merged output.

The workers of one run share ONE record per output (`<dataset>.<split>.None.csv` in the run's
`provenance.json`, docs/formats.md): its shard-independent fields (`SAMPLING_IDENTITY`) must agree, or the
worker refuses to start (`ProvenanceMismatch`); each worker adds its own entry under `shards`.

    record_sampling_shard(output_dir, cfg, env, selected_task_ids, shard, num_shards, model_info)
"""
from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from densepolicy.provenance import (FILE_NAME, DataFiles, EnvIdentity, Environment, EvalSet, ProvenanceMismatch,
                                    Record, SamplingRecord, ServedModel, ShardEntry, abbreviated, digest,
                                    env_data_files, env_record, model_fingerprint, ordered_sha256, timestamp,
                                    update_record)
from densepolicy.sampling.config import sampler_settings, shard_file_stem, shard_slice
from densepolicy.sampling.shard_identity import RUNTIME_ONLY_KEYS

SAMPLING_IDENTITY = ("settings_sha256", "eval_set.order_sha256", "data_files.sha256", "model.fingerprint",
                     "env.code_sha256", "env.packages")
"""Fields every worker writing into one run record must agree on (named as in messages and docs/formats.md)."""


def sampling_identity(record: SamplingRecord) -> dict[str, Any]:
    """The SAMPLING_IDENTITY fields of `record`, by name (None where the record lacks one)."""
    eval_set, data_files, model, env = record.eval_set, record.data_files, record.model, record.env
    return {"settings_sha256": record.settings_sha256,
            "eval_set.order_sha256": eval_set.order_sha256 if eval_set else None,
            "data_files.sha256": data_files.sha256 if data_files else None,
            "model.fingerprint": model.fingerprint if model else None,
            "env.code_sha256": env.code_sha256 if env else None,
            "env.packages": dict(env.packages) if env else None}


def record_sampling_shard(output_dir: str | os.PathLike, cfg: Any, env: Any, task_ids: Sequence[str], shard: int,
                          num_shards: int, model: Any) -> SamplingRecord:
    """Write or join the run record of `cfg`'s output (`<dataset>.<split>.None.csv`) in `output_dir`.

    `task_ids`: the selected tasks before sharding; `model`: the worker's `ModelInfo`. Raises
    `ProvenanceMismatch` when the directory holds a record of the same output made from other
    settings, tasks, data files, model or env/grader code.
    """
    key = shard_file_stem(cfg, "None") + ".csv"
    # flat keys (`base`, not `tree.base`), as records made before the config's sections hold them
    settings = {**sampler_settings(cfg), "model": model.name, "num_shards": num_shards}
    new = SamplingRecord(
        stage="evaluation" if cfg.method == "codeact_agent" else "sampling",
        file=key,
        created=timestamp(),
        environment=Environment.current(),
        settings=settings,
        settings_sha256=digest({k: v for k, v in settings.items() if k not in RUNTIME_ONLY_KEYS}),
        env=EnvIdentity.from_dict(env_record(cfg.env, cfg.split)),
        data_files=DataFiles.of(env_data_files(env)),
        eval_set=EvalSet.of(task_ids),
        model=ServedModel.from_dict({**model_fingerprint(model.path, model.name), "served_name": model.served_name}),
    )
    mine = shard_slice([str(t) for t in task_ids], shard, num_shards)
    entry = ShardEntry(task_count=len(mine), task_ids_sha256=ordered_sha256(mine),
                       first_task=mine[0] if mine else None, last_task=mine[-1] if mine else None,
                       host=socket.gethostname(), pid=os.getpid(), started=new.created)
    prov_file = Path(output_dir) / FILE_NAME

    def join(old: Record | None) -> SamplingRecord:
        record = new
        if old is not None:
            if not isinstance(old, SamplingRecord):
                raise ProvenanceMismatch(f"{prov_file}: {key} is the record of a {old.stage or 'unknown'} stage, not "
                                         f"of a sampling run; choose another output_dir")
            before, after = sampling_identity(old), sampling_identity(new)
            for name in SAMPLING_IDENTITY:
                if before[name] != after[name]:
                    raise ProvenanceMismatch(
                        f"{prov_file}: {key} was started with a different {name} ({abbreviated(before[name], 40)} "
                        f"-> {abbreviated(after[name], 40)}); results of different inputs must not share a run "
                        f"directory: choose another output_dir")
            record = old
        mine_entry = entry
        if digest(_plain(new.environment)) != digest(_plain(record.environment)):
            mine_entry = dataclasses.replace(entry, environment=new.environment)  # another commit or node
        return dataclasses.replace(record, shards={**record.shards, str(shard): mine_entry}, updated=new.created)

    return update_record(prov_file, key, join)


def _plain(environment: Environment | None) -> Any:
    return environment.to_dict() if environment is not None else None
