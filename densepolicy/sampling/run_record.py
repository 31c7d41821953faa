"""The sampling run's provenance record: each worker writes or joins the record of its run's merged output.

The workers of one run share ONE record per output (`<dataset>.<split>.None.csv` in the run's
`provenance.json`, docs/formats.md): its shard-independent fields (`SAMPLING_IDENTITY`) must agree, or the
worker refuses to start (`ProvenanceMismatch`); each worker adds its own entry under `shards`.

    record_sampling_shard(output_dir, cfg, env, selected_task_ids, shard, num_shards, model_info)
"""
from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from densepolicy.provenance import (FILE_NAME, ProvenanceMismatch, abbreviated, data_files_record, digest,
                                    env_data_files, env_record, environment, eval_set_record, get_dotted,
                                    model_fingerprint, ordered_sha256, timestamp, update_record)
from densepolicy.sampling.config import sampler_settings, shard_file_stem, shard_slice
from densepolicy.sampling.shard_identity import RUNTIME_ONLY_KEYS

SAMPLING_IDENTITY = ("settings_sha256", "eval_set.order_sha256", "data_files.sha256", "model.fingerprint",
                     "env.code_sha256", "env.packages")
"""Fields every worker writing into one run record must agree on."""


def record_sampling_shard(output_dir: str | os.PathLike, cfg: Any, env: Any, task_ids: Sequence[str], shard: int,
                          num_shards: int, model: Any) -> dict[str, Any]:
    """Write or join the run record of `cfg`'s output (`<dataset>.<split>.None.csv`) in `output_dir`.

    `task_ids`: the selected tasks before sharding; `model`: the worker's `ModelInfo`. Raises
    `ProvenanceMismatch` when the directory holds a record of the same output made from other
    settings, tasks, data files, model or env/grader code.
    """
    key = shard_file_stem(cfg, "None") + ".csv"
    # flat keys (`base`, not `tree.base`), as records made before the config's sections hold them
    settings = {**sampler_settings(cfg), "model": model.name, "num_shards": num_shards}
    new = {
        "stage": "evaluation" if cfg.method == "codeact_agent" else "sampling",
        "file": key,
        "created": timestamp(),
        "environment": environment(),
        "settings": settings,
        "settings_sha256": digest({k: v for k, v in settings.items() if k not in RUNTIME_ONLY_KEYS}),
        "env": env_record(cfg.env, cfg.split),
        "data_files": data_files_record(env_data_files(env)),
        "eval_set": eval_set_record(task_ids),
        "model": {**model_fingerprint(model.path, model.name), "served_name": model.served_name},
        "shards": {},
    }
    mine = shard_slice([str(t) for t in task_ids], shard, num_shards)
    entry: dict[str, Any] = {"task_count": len(mine), "task_ids_sha256": ordered_sha256(mine),
                             "first_task": mine[0] if mine else None, "last_task": mine[-1] if mine else None,
                             "host": socket.gethostname(), "pid": os.getpid(), "started": new["created"]}
    prov_file = Path(output_dir) / FILE_NAME

    def join(old: dict[str, Any] | None) -> dict[str, Any]:
        record = new
        if old is not None:
            for name in SAMPLING_IDENTITY:
                before, after = get_dotted(old, name), get_dotted(new, name)
                if before != after:
                    raise ProvenanceMismatch(
                        f"{prov_file}: {key} was started with a different {name} ({abbreviated(before, 40)} "
                        f"-> {abbreviated(after, 40)}); results of different inputs must not share a run "
                        f"directory: choose another output_dir")
            record = old
        if digest(new["environment"]) != digest(record["environment"]):
            entry["environment"] = new["environment"]  # e.g. another commit or node: kept per shard
        record.setdefault("shards", {})[str(shard)] = entry
        record["updated"] = new["created"]
        return record

    return update_record(prov_file, key, join)
