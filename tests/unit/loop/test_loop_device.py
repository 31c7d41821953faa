"""`make demo` / `make experiment` follow the device `make setup SERVE=...` built: on a GPU box their servers get
the GPU serving settings and their training the configs' `gpu:` keys (configs/demo.yaml, configs/experiment.yaml)."""
from __future__ import annotations

import pytest

from densepolicy.config import ConfigError, load_config
from densepolicy.demo import Demo, DemoConfig
from densepolicy.experiment import ExperimentConfig, dpo_steps
from densepolicy.loop_config import load_loop_config
from densepolicy.paths import PROJECT_ROOT
from densepolicy.serving.server import ServingConfig, VLLMServer

DEMO = PROJECT_ROOT / "configs" / "demo.yaml"
EXPERIMENT = PROJECT_ROOT / "configs" / "experiment.yaml"


def serving_python(tmp_path, flavor: str | None) -> str:
    """bin/python of a serving venv as scripts/setup.sh leaves it (with its .densepolicy-flavor unless None)."""
    venv = tmp_path / f"venv-{flavor}"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    if flavor:
        (venv / ".densepolicy-flavor").write_text(flavor + "\n")
    return str(venv / "bin" / "python")


def test_demo_after_setup_serve_gpu_serves_and_trains_on_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    cfg = load_loop_config(DemoConfig, DEMO, [f"serving.python={serving_python(tmp_path, 'gpu')}",
                                              f"output_dir={tmp_path / 'demo'}"])
    assert cfg.device == "gpu" and cfg.serving["device"] == "gpu"
    assert "bf16=true" in cfg.train_overrides and "densepolicy_fast=false" in cfg.train_overrides
    stages = Demo(cfg, warm_start=lambda *a: tmp_path).stages
    # what LoopStages.serve builds from configs/serving.yaml + the demo's serving overrides
    scfg = load_config(ServingConfig, PROJECT_ROOT / "configs" / "serving.yaml",
                       [f"{k}={v}" for k, v in stages.serving.items()])
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"max_position_embeddings": 8192, "torch_dtype": "float32"}')
    server = VLLMServer(str(model), scfg, None, port=1)
    assert "--enforce-eager" not in server.command() and "--tensor-parallel-size" in server.command()
    assert not any(k.startswith("VLLM_CPU") for k in server.environment())


def test_demo_after_setup_serve_cpu_keeps_the_cpu_settings(tmp_path):
    plain = load_config(DemoConfig, DEMO, [])
    cfg = load_loop_config(DemoConfig, DEMO, [f"serving.python={serving_python(tmp_path, 'cpu')}"])
    assert cfg.device == "cpu" and cfg.serving["device"] == "cpu"
    assert cfg.train_config == plain.train_config and cfg.train_overrides == plain.train_overrides


def test_command_line_wins_over_the_gpu_keys_and_device_can_be_forced(tmp_path):
    cfg = load_loop_config(DemoConfig, DEMO, [f"serving.python={serving_python(tmp_path, 'cpu')}", "device=gpu",
                                              "train_overrides=[max_steps=1]"])
    assert cfg.device == "gpu" and cfg.serving["device"] == "gpu" and cfg.train_overrides == ["max_steps=1"]
    forced_cpu = load_loop_config(ExperimentConfig, EXPERIMENT,
                                  [f"serving.python={serving_python(tmp_path, 'gpu')}", "device=cpu"])
    assert forced_cpu.device == "cpu" and forced_cpu.proc_per_server == load_config(
        ExperimentConfig, EXPERIMENT, []).proc_per_server


def test_experiment_gpu_keys_apply_on_a_gpu(tmp_path):
    cfg = load_loop_config(ExperimentConfig, EXPERIMENT, [f"serving.python={serving_python(tmp_path, 'gpu')}"])
    assert cfg.device == "gpu" and cfg.proc_per_server == 16 and "bf16=true" in cfg.train_overrides


def test_a_typo_in_the_gpu_keys_fails_on_every_device(tmp_path):
    bad = tmp_path / "demo.yaml"
    bad.write_text(DEMO.read_text().replace("gpu:                        #", "gpu:\n  trian_config: x\n  #", 1))
    with pytest.raises(ConfigError, match="key 'gpu': unknown key 'trian_config'"):
        load_loop_config(DemoConfig, bad, [f"serving.python={serving_python(tmp_path, 'cpu')}"])
    bad.write_text(DEMO.read_text().replace("gpu:                        #", "gpu:\n  proc_per_server: many\n  #", 1))
    with pytest.raises(ConfigError, match="proc_per_server"):
        load_loop_config(DemoConfig, bad, [f"serving.python={serving_python(tmp_path, 'cpu')}"])


def test_dpo_steps_count_every_training_process():
    """On 8 GPUs train.py runs 8 processes: a step is 8x the pairs of a one-process step."""
    cfg = load_config(ExperimentConfig, EXPERIMENT, ["dpo_max_steps=1000", "dpo_epochs=1"])
    assert dpo_steps(cfg, 64, processes=1) == 16   # cpu_dpo: 2 per device x 2 accumulation
    assert dpo_steps(cfg, 64, processes=8) == 2


def test_an_experiment_made_before_the_device_key_resumes_on_the_cpu(tmp_path):
    import json
    from densepolicy.config import to_dict
    from densepolicy.experiment import Experiment

    python = serving_python(tmp_path, "cpu")
    overrides = [f"serving.python={python}", f"output_dir={tmp_path / 'exp'}", "resume=true"]
    cfg = load_loop_config(ExperimentConfig, EXPERIMENT, overrides)
    old = to_dict(cfg)
    del old["device"], old["gpu"], old["serving"]["device"]
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "run.json").write_text(json.dumps({"config": old}))
    Experiment(cfg).check_resumable()
    gpu = load_loop_config(ExperimentConfig, EXPERIMENT, [*overrides, "device=gpu"])
    with pytest.raises(ConfigError, match="other settings"):
        Experiment(gpu).check_resumable()
