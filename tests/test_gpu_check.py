"""`make gpu-check` (scripts/gpu_check.py): its no-GPU exit, and its training half as a CPU dry run where
the serving venv is missing (what a box with only LLaMA-Factory looks like to it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from densepolicy.gpu_check import EXIT_NO_GPU, EXIT_USAGE, write_datasets
from densepolicy.paths import PROJECT_ROOT


def run_check(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/gpu_check.py", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_without_a_gpu_it_says_so_and_exits_with_its_own_code(tmp_path):
    proc = run_check("--work-dir", str(tmp_path / "w"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == EXIT_NO_GPU, proc.stdout + proc.stderr
    assert "no GPU found" in proc.stdout and "--cpu" in proc.stdout
    assert not (tmp_path / "w" / "gpu_check.json").exists()  # nothing was checked


def test_unknown_check_is_a_usage_error():
    proc = run_check("--only", "dpo_zero3,nccl")
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.strip().startswith("error: unknown check 'nccl'; checks: gpu, dpo_zero3")


def test_datasets_are_registered_pairwise_and_multi_turn(tmp_path):
    info = json.loads((write_datasets(tmp_path, pairs=5, conversations=3) / "dataset_info.json").read_text())
    pairs = json.loads((tmp_path / info["gpu_check_pairs"]["file_name"]).read_text())
    sft = json.loads((tmp_path / info["gpu_check_sft"]["file_name"]).read_text())
    assert info["gpu_check_pairs"]["ranking"] is True and "ranking" not in info["gpu_check_sft"]
    assert len(pairs) == 5 and pairs[0]["chosen"]["value"] != pairs[0]["rejected"]["value"]
    assert len(sft) == 3 and [m["from"] for m in sft[0]["conversations"]] == ["human", "gpt", "human", "gpt"]


@pytest.mark.integration
def test_cpu_dry_run_trains_with_the_gpu_configs_and_skips_vllm_without_a_serving_venv(tmp_path):
    """The ZeRO-3 config (DeepSpeed off on CPU, whole-run warm-up checked) trains through TreeDPO's code on
    a tiny random model; with no serving venv the vLLM check is a SKIP with its reason, not a FAIL."""
    work = tmp_path / "w"
    proc = run_check("--cpu", "--steps", "2", "--only", "dpo_zero3,vllm_server,tree", "--work-dir", str(work),
                     env={"DENSEPOLICY_SERVE_PYTHON": str(tmp_path / "no-serve-venv" / "bin" / "python")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((work / "gpu_check.json").read_text())
    status = {c["name"]: (c["status"], c["detail"]) for c in report["checks"]}
    assert status["gpu"][0] == "SKIP"
    assert status["dpo_zero3"][0] == "PASS" and "lr rising 0 ->" in status["dpo_zero3"][1]
    assert status["vllm_server"][0] == "SKIP" and "no vLLM in the serving venv" in status["vllm_server"][1]
    assert status["tree"][0] == "SKIP"
    assert "1 PASS, 0 FAIL, 3 SKIP" in proc.stdout  # the one-screen report
    assert (work / "dpo_zero3" / "model.safetensors").is_file()
