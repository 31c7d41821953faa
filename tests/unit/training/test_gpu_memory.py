"""Training refuses GPUs that a vLLM server left running still holds (a fake nvidia-smi on PATH stands in
for NVIDIA's driver utility, answering the queries densepolicy/training/gpu_memory.py makes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from densepolicy.paths import PROJECT_ROOT
from densepolicy.training.gpu_memory import (ALLOW_ENV, GpusBusyError, busy_training_gpus, check_gpus_free,
                                             gpu_memory)
from densepolicy.training.train import TrainingError, train
from tests.harness.treedpo_helpers import write_dataset

# GPU 0: a vLLM server at gpu_memory_utilization 0.9 of an H200; GPU 1: a desktop's few hundred MiB.
GPUS = "0, GPU-aaaa, 127800, 143771\n1, GPU-bbbb, 412, 143771\n"
APPS = "GPU-aaaa, 4242, /work/.venv-serve/bin/python, 127300\n"


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """nvidia-smi answering from gpus.csv / apps.csv in its folder (rewrite them to change the machine)."""
    folder = tmp_path / "smi"
    folder.mkdir()
    (folder / "gpus.csv").write_text(GPUS)
    (folder / "apps.csv").write_text(APPS)
    script = folder / "nvidia-smi"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in
          *--query-gpu=index,uuid,memory.used,memory.total*) cat "{folder}/gpus.csv" ;;
          *--query-compute-apps=gpu_uuid,pid,process_name,used_memory*) cat "{folder}/apps.csv" ;;
          *--query-gpu=index*) printf '0\\n1\\n' ;;
          *) exit 9 ;;
        esac
        """))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    return folder


def test_memory_is_read_per_gpu(fake_smi):
    gpus = gpu_memory()
    assert [(g.index, g.uuid) for g in gpus] == [("0", "GPU-aaaa"), ("1", "GPU-bbbb")]
    assert gpus[0].used_fraction == pytest.approx(127800 / 143771)


def test_a_gpu_a_server_holds_is_refused_with_its_process_and_the_fix(fake_smi):
    with pytest.raises(GpusBusyError) as err:
        check_gpus_free(["0", "1"], environ={})
    message = str(err.value)
    assert "GPU 0: 124.8 of 140.4 GiB in use (89 %; pid 4242 python (124.3 GiB))" in message
    assert "GPU 1" not in message
    assert "./distributed_test.sh stop TMUX_START_ID" in message and "--allow-busy-gpus" in message
    check_gpus_free(["1"], environ={})  # the free GPU alone is fine
    assert [g.index for g in busy_training_gpus(["GPU-aaaa"])] == ["0"]  # CUDA_VISIBLE_DEVICES may hold UUIDs


def test_allow_variable_no_gpus_and_no_nvidia_smi_skip_the_check(fake_smi, monkeypatch):
    check_gpus_free(["0"], environ={ALLOW_ENV: "1"})
    check_gpus_free([], environ={})
    (fake_smi / "nvidia-smi").unlink()
    assert gpu_memory() is None
    check_gpus_free(["0"], environ={})


def test_mig_or_unsupported_memory_fields_are_not_read_as_busy(fake_smi):
    (fake_smi / "gpus.csv").write_text("0, GPU-aaaa, [N/A], [N/A]\n")
    assert gpu_memory() == []
    check_gpus_free(["0"], environ={})


def _model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 2048}))
    return model


def test_train_refuses_before_it_writes_anything(fake_smi, tmp_path, monkeypatch):
    """The old train.py launched LLaMA-Factory on the server's GPU (and failed later with CUDA out of memory)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    data = tmp_path / "data"
    write_dataset(data, "tiny_tree_dpo")
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="GPU 0: 124.8 of 140.4 GiB in use"):
        train("cpu_tiny", dataset="tiny_tree_dpo", model=_model_dir(tmp_path), output_dir=out, dataset_dir=data)
    assert not out.exists()


def test_allowing_busy_gpus_goes_past_the_check(fake_smi, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    data = tmp_path / "data"
    write_dataset(data, "tiny_tree_dpo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")  # the next check (non-empty output dir) stops it before any training
    with pytest.raises(Exception, match="exists and is not empty"):
        train("cpu_tiny", dataset="tiny_tree_dpo", model=_model_dir(tmp_path), output_dir=out, dataset_dir=data,
              allow_busy_gpus=True)


def test_cli_names_the_busy_gpu_and_the_flag(fake_smi, tmp_path):
    data = tmp_path / "data"
    write_dataset(data, "tiny_tree_dpo")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    argv = [sys.executable, "TreeDPO/train.py", "cpu_tiny", "--dataset", "tiny_tree_dpo", "--dataset-dir", str(data),
            "--model", str(_model_dir(tmp_path)), "--output-dir", str(tmp_path / "out")]
    proc = subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "GPU 0: 124.8 of 140.4 GiB in use" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
