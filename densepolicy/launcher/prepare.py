"""Turn the command line into a checked `RunPlan` (shared by the tmux and Slurm backends)."""
from __future__ import annotations

from densepolicy.config import ConfigError, to_dict
from densepolicy.launcher import servers as serving
from densepolicy.launcher.config import LauncherConfig, sampler_args, serving_overrides
from densepolicy.gpus import GPUError, detect_gpus
from densepolicy.launcher.manifest import ManifestMismatch, check_or_write_manifest, make_manifest
from densepolicy.launcher.naming import UnknownName, check_worker_settings, default_output_dir
from densepolicy.launcher.plan import (EXIT_ENVIRONMENT, EXIT_MODEL, EXIT_USAGE, LaunchError, RunPlan,
                                       RunRequest, local_server_groups, shards_for)
from densepolicy.paths import resolve


def prepare(request: RunRequest, cfg: LauncherConfig) -> RunPlan:
    """Validate names, resolve the model, choose servers and shards, and claim the output dir."""
    if request.proc_per_gpu < 1:
        raise LaunchError(f"PROC_PER_GPU must be >= 1, got {request.proc_per_gpu}", EXIT_USAGE)
    if request.start_id < 0:
        raise LaunchError(f"TMUX_START_ID must be >= 0, got {request.start_id}", EXIT_USAGE)
    args = sampler_args(cfg)
    try:
        sampler_cfg = check_worker_settings(request.dataset, request.method, args)
    except UnknownName as exc:
        raise LaunchError(str(exc), EXIT_USAGE) from None

    if cfg.server == "external":
        try:
            identity = serving.served_model_directory(request.model)
        except (serving.ModelNotFound, ImportError):
            identity = request.model  # a name only the external server knows
        groups = []
    else:
        try:
            identity = serving.served_model_directory(request.model)
        except serving.ModelNotFound as exc:
            raise LaunchError(str(exc), EXIT_MODEL) from None
        groups = server_groups(cfg)

    if not resolve(cfg.worker_script).is_file():
        raise LaunchError(f"worker script not found: {resolve(cfg.worker_script)} (key 'worker_script')",
                          EXIT_USAGE)
    if cfg.backend == "slurm":
        per_task = request.proc_per_gpu * max(1, cfg.slurm.gpus_per_task)
        num_shards = cfg.slurm.array_size * per_task
    else:
        num_shards = shards_for(request.proc_per_gpu, groups or [[]])
    output_dir = resolve(cfg.output_dir) if cfg.output_dir else default_output_dir(sampler_cfg, request.model)
    if cfg.server == "vllm":
        device = "gpu" if any(groups) or (cfg.backend == "slurm" and cfg.slurm.gpus_per_task) else "cpu"
        tp = cfg.slurm.gpus_per_task if cfg.backend == "slurm" and cfg.slurm.gpus_per_task else None
        try:  # validate serving.* overrides now, not in a tmux session
            serving.load_serving_config(device, serving_overrides(cfg), tp)
        except ConfigError as exc:
            raise LaunchError(f"serving settings (serving.KEY=VALUE): {exc}", EXIT_USAGE) from None
    plan = RunPlan(request=request, cfg=cfg, model_identity=identity, worker_settings=to_dict(sampler_cfg),
                   server_gpus=groups, num_shards=num_shards, output_dir=output_dir, sampler_args=args)
    return plan


def claim_output_dir(plan: RunPlan) -> None:
    """Write the run manifest, or check that the output dir already holds this very run."""
    manifest = make_manifest(plan.model_identity, plan.request.dataset, plan.request.method,
                             plan.num_shards, plan.worker_settings, plan.sampler_args)
    try:
        check_or_write_manifest(plan.output_dir, manifest)
    except ManifestMismatch as exc:
        raise LaunchError(str(exc), EXIT_USAGE) from None


def server_groups(cfg: LauncherConfig) -> list[list[str]]:
    """GPU ids of each local server (one CPU server when there is no GPU)."""
    if cfg.backend == "slurm":
        return [[]] * cfg.slurm.array_size  # GPUs are chosen by Slurm inside each task
    try:
        gpu_ids = detect_gpus(cfg.gpus)
        tp = 1
        if gpu_ids:
            # null (configs/serving.yaml): one server per GPU, as the original
            tp = serving.load_serving_config("gpu", serving_overrides(cfg)).tensor_parallel_size or 1
        return local_server_groups(gpu_ids, tp)
    except (GPUError, ConfigError) as exc:
        raise LaunchError(str(exc), EXIT_ENVIRONMENT) from None
