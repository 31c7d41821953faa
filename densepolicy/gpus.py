"""Which GPUs this machine has: $CUDA_VISIBLE_DEVICES, else the driver (nvidia-smi), else none."""
from __future__ import annotations

import os
import shutil
import subprocess

from densepolicy.config import ConfigError


class GPUError(RuntimeError):
    """GPU detection or allocation failed; the message says what to change."""


def detect_gpus(setting: str = "auto", env: dict[str, str] | None = None) -> list[str]:
    """GPU ids to use: the `gpus` setting ('auto' | 'none' | '0,1,...'); [] means CPU mode.

    'auto' reads $CUDA_VISIBLE_DEVICES when it is set (an empty value or -1 means no GPU), else asks
    nvidia-smi; no nvidia-smi or no GPU listed means CPU mode.
    """
    env = os.environ if env is None else env
    setting = str(setting).strip()
    if setting.lower() in ("none", "cpu", ""):
        return []
    if setting.lower() != "auto":
        ids = [g.strip() for g in setting.split(",") if g.strip()]
        if not ids:
            raise ConfigError(f"key 'gpus': expected 'auto', 'none' or a list like '0,1', got {setting!r}")
        return ids
    if "CUDA_VISIBLE_DEVICES" in env:
        raw = env["CUDA_VISIBLE_DEVICES"].strip()
        ids = [g.strip() for g in raw.split(",") if g.strip()]
        return [] if not ids or ids == ["-1"] else ids
    return _nvidia_smi_gpus()


def _nvidia_smi_gpus() -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


def busy_gpus(gpu_ids: list[str]) -> dict[str, list[int]]:
    """GPUs among `gpu_ids` that already run compute processes: {gpu index: [pids]} (needs nvidia-smi)."""
    exe = shutil.which("nvidia-smi")
    if exe is None or not gpu_ids:
        return {}
    try:
        uuids = subprocess.run([exe, "--query-gpu=index,uuid", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        apps = subprocess.run([exe, "--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if uuids.returncode != 0 or apps.returncode != 0:
        return {}
    index_of = {}
    for line in uuids.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2:
            index_of[parts[1]] = parts[0]
    busy: dict[str, list[int]] = {}
    for line in apps.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[1].isdigit() and index_of.get(parts[0]) in gpu_ids:
            busy.setdefault(index_of[parts[0]], []).append(int(parts[1]))
    return busy


def group_gpus(gpu_ids: list[str], tensor_parallel_size: int) -> list[list[str]]:
    """Split the GPUs into one group per server of `tensor_parallel_size` GPUs each."""
    tp = max(1, tensor_parallel_size)
    if len(gpu_ids) < tp or len(gpu_ids) % tp:
        raise GPUError(f"{len(gpu_ids)} GPU(s) ({','.join(gpu_ids)}) cannot be split into servers of "
                       f"tensor_parallel_size={tp}; set gpus=... to a multiple of {tp}")
    return [gpu_ids[i:i + tp] for i in range(0, len(gpu_ids), tp)]
