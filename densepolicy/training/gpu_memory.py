"""Is a GPU free enough to train on? Read from nvidia-smi before `llamafactory-cli train` starts.

A vLLM server of ``./distributed_test.sh`` keeps running after its workers end (as in the original, unless
``wait=true``) and holds ``gpu_memory_utilization`` (0.9) of its GPU; training started on the same GPUs then
fails minutes later with a CUDA out-of-memory error deep in DeepSpeed, or worse, runs slowly beside it.
`check_gpus_free` refuses at once and names the processes:

    check_gpus_free(["0", "1"])   # raises GpusBusyError when >= 10 % of a GPU's memory is in use

The check needs nvidia-smi (NVIDIA's driver utility); without it, or when it fails, nothing is checked.
``DENSEPOLICY_ALLOW_BUSY_GPUS=1`` (or ``TreeDPO/train.py --allow-busy-gpus``) skips it on purpose.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Mapping

BUSY_FRACTION = 0.10
"""A GPU with at least this share of its memory in use is busy (a vLLM server holds 0.9; a desktop, ~0.01)."""
ALLOW_ENV = "DENSEPOLICY_ALLOW_BUSY_GPUS"


class GpusBusyError(RuntimeError):
    """A GPU that training would use is already largely in use; the message names it, the processes and the fix."""


@dataclasses.dataclass(frozen=True)
class GpuMemory:
    """Memory of one GPU as nvidia-smi reports it (MiB)."""

    index: str
    uuid: str
    used_mib: float
    total_mib: float

    @property
    def used_fraction(self) -> float:
        return self.used_mib / self.total_mib if self.total_mib > 0 else 0.0


def _smi(args: list[str]) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]" (e.g. MIG) or "[Not Supported]"
        return None


def gpu_memory() -> list[GpuMemory] | None:
    """Every GPU's memory use (`nvidia-smi --query-gpu`), or None where nvidia-smi is missing or fails."""
    out = _smi(["--query-gpu=index,uuid,memory.used,memory.total", "--format=csv,noheader,nounits"])
    if out is None:
        return None
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        used, total = _number(parts[2]), _number(parts[3])
        if used is not None and total is not None:
            gpus.append(GpuMemory(parts[0], parts[1], used, total))
    return gpus


def gpu_processes() -> dict[str, list[str]]:
    """GPU uuid -> ["pid NAME (X GiB)", ...] of its compute processes ({} where nvidia-smi cannot say)."""
    out = _smi(["--query-compute-apps=gpu_uuid,pid,process_name,used_memory", "--format=csv,noheader,nounits"])
    procs: dict[str, list[str]] = {}
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        used = _number(parts[3])
        size = f" ({used / 1024:.1f} GiB)" if used is not None else ""
        procs.setdefault(parts[0], []).append(f"pid {parts[1]} {os.path.basename(parts[2])}{size}")
    return procs


def busy_training_gpus(gpu_ids: list[str], busy_fraction: float = BUSY_FRACTION) -> list[GpuMemory]:
    """The GPUs among `gpu_ids` (indices or UUIDs, as in CUDA_VISIBLE_DEVICES) with >= `busy_fraction` of
    their memory in use; [] when none is, or nvidia-smi cannot tell."""
    wanted = {g.strip() for g in gpu_ids if g.strip()}
    return [g for g in gpu_memory() or [] if (g.index in wanted or g.uuid in wanted)
            and g.used_fraction >= busy_fraction]


def check_gpus_free(gpu_ids: list[str], environ: Mapping[str, str] | None = None,
                    busy_fraction: float = BUSY_FRACTION) -> None:
    """Raise `GpusBusyError` when a GPU of `gpu_ids` already has >= `busy_fraction` of its memory in use,
    unless $DENSEPOLICY_ALLOW_BUSY_GPUS is 1. The message lists each busy GPU, its processes and the fixes."""
    environ = os.environ if environ is None else environ
    if environ.get(ALLOW_ENV, "").lower() in ("1", "true", "yes") or not gpu_ids:
        return
    busy = busy_training_gpus(gpu_ids, busy_fraction)
    if not busy:
        return
    procs = gpu_processes()
    lines = []
    for g in busy:
        who = "; ".join(procs.get(g.uuid, [])) or "processes not listed"
        lines.append(f"GPU {g.index}: {g.used_mib / 1024:.1f} of {g.total_mib / 1024:.1f} GiB in use "
                     f"({100 * g.used_fraction:.0f} %; {who})")
    raise GpusBusyError(
        "training would start on GPUs that are already in use:\n  " + "\n  ".join(lines) + "\n"
        "A vLLM server of ./distributed_test.sh keeps its GPUs after its workers end (unless wait=true): stop it "
        "with `./distributed_test.sh stop TMUX_START_ID` (see `./distributed_test.sh status`), or train on other "
        "GPUs (CUDA_VISIBLE_DEVICES=...). To train anyway: --allow-busy-gpus (TreeDPO/train.py) or "
        f"{ALLOW_ENV}=1.")
