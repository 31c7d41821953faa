"""Names the launcher derives: default output directory, session names, dataset/method checks."""
from __future__ import annotations

from pathlib import Path

from densepolicy.paths import resolve


class UnknownName(ValueError):
    """A dataset or method name that does not exist."""


def check_worker_settings(dataset: str, method: str, sampler_args: list[str]):
    """The worker's resolved settings (SamplerConfig); unknown dataset/method/keys raise `UnknownName`."""
    from densepolicy.config import ConfigError
    from densepolicy.sampling.config import resolve_sampler_config

    try:
        return resolve_sampler_config(method, dataset, sampler_args)
    except ConfigError as exc:
        raise UnknownName(str(exc).replace("command line:", "sampler settings (sampler.KEY=VALUE):")) from None


def default_output_dir(sampler_cfg, model: str) -> Path:
    """`eval_results/<method>.<model>/<run_name>/`, exactly as sample_tree.py names it."""
    from densepolicy.sampling.config import default_output_dir as sampler_default

    return resolve(sampler_default(sampler_cfg, model))


def server_session(start_id: int, index: int) -> str:
    """tmux session of server `index` (the original's `server$ID`, offset by TMUX_START_ID)."""
    return f"server{start_id + index}"


def worker_session(start_id: int, shard: int) -> str:
    """tmux session of the worker of shard `shard` (the original's `agent$ID`)."""
    return f"agent{start_id + shard}"
