"""The GPU training recipe's three defects found on a real GPU (issue 12), checked on CPU:

1. DeepSpeed on one GPU needs FORCE_TORCHRUN=1 (and torchrun settings) in LLaMA-Factory's environment;
2. `warmup_ratio: 1.0` must warm up over the whole run, not one step (transformers 5 semantics);
3. command-line overrides get the types of LLaMA-Factory's fields (`eval_strategy=no` is the text "no").
"""
from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from densepolicy.config import ConfigError
from densepolicy.paths import PROJECT_ROOT, embedded_model_dir
from densepolicy.training.launch import distributed_env
from densepolicy.training.lf_args import WHOLE_RUN_WARMUP, translate_warmup
from densepolicy.training.train import (
    TrainingError,
    build_train_args,
    metric_series,
    read_log_history,
    train,
)
from tests.harness.treedpo_helpers import write_dataset

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TORCHRUN_VARS = ("FORCE_TORCHRUN", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def dataset_dir(tmp_path):
    d = tmp_path / "data"
    write_dataset(d, "tiny_tree_dpo")
    return d


@pytest.fixture
def clean_launch_env(monkeypatch):
    """No GPU, no torchrun settings inherited from the machine running the tests."""
    for name in TORCHRUN_VARS + ("CUDA_VISIBLE_DEVICES",):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_nvidia_smi(directory: Path, gpus: int) -> Path:
    """An `nvidia-smi` that lists `gpus` GPU indices, first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = "\\n".join(str(i) for i in range(gpus))
    _executable(directory / "nvidia-smi", f"#!/bin/sh\nprintf '{lines}\\n'\n")
    return directory


# ------------------------------------------------------------------------------ 1. launching DeepSpeed


def test_deepspeed_on_one_gpu_forces_torchrun_with_one_process(clean_launch_env):
    env = distributed_env({"deepspeed": "ds_z3_config.json"}, {"CUDA_VISIBLE_DEVICES": "3", "PATH": ""})
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "1" and env["NNODES"] == "1"
    assert env["NODE_RANK"] == "0" and env["MASTER_ADDR"] == "127.0.0.1"
    assert 0 < int(env["MASTER_PORT"]) < 65536


def test_process_count_follows_the_visible_gpus(clean_launch_env, tmp_path):
    assert distributed_env({}, {"CUDA_VISIBLE_DEVICES": "0,1,2"})["NPROC_PER_NODE"] == "3"
    assert distributed_env({}, {"CUDA_VISIBLE_DEVICES": "5"}) == {}  # one GPU, no DeepSpeed: one process
    assert distributed_env({}, {"CUDA_VISIBLE_DEVICES": ""}) == {}
    # no CUDA_VISIBLE_DEVICES: the driver's list
    clean_launch_env.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', 2)}{os.pathsep}{os.environ['PATH']}")
    env = distributed_env({"deepspeed": "z3.json"}, dict(os.environ))
    assert env["NPROC_PER_NODE"] == "2" and env["FORCE_TORCHRUN"] == "1"


def test_settings_in_the_environment_win(clean_launch_env):
    env = distributed_env({"deepspeed": "z3.json"}, {
        "CUDA_VISIBLE_DEVICES": "0,1,2,3", "NPROC_PER_NODE": "2", "NNODES": "2", "NODE_RANK": "1",
        "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29555"})
    assert env == {"FORCE_TORCHRUN": "1", "NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "2",
                   "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29555"}


def test_impossible_launches_are_refused_with_one_line(clean_launch_env):
    with pytest.raises(ConfigError, match="key 'deepspeed' .* needs a GPU, and none is visible"):
        distributed_env({"deepspeed": "z3.json"}, {"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(ConfigError, match="multi-node run needs MASTER_ADDR and MASTER_PORT"):
        distributed_env({"deepspeed": "z3.json"}, {"CUDA_VISIBLE_DEVICES": "0", "NNODES": "2"})
    with pytest.raises(ConfigError, match="NPROC_PER_NODE must be a positive integer"):
        distributed_env({}, {"CUDA_VISIBLE_DEVICES": "0,1", "NPROC_PER_NODE": "all"})


def fake_main_venv(root: Path) -> Path:
    """A main venv whose `llamafactory-cli` records its environment and fails, and whose `torchrun` exists
    only in its bin/ (found only if train.py puts that bin/ first on PATH)."""
    bin_dir = root / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    _executable(bin_dir / "llamafactory-cli",
                f"#!/bin/sh\n\"{bin_dir / 'python'}\" -c 'import json, os, sys; "
                f"json.dump({{\"env\": dict(os.environ), \"argv\": sys.argv[1:]}}, "
                f"open(\"{root / 'launch.json'}\", \"w\"))' \"$@\"\n"
                "exit 3\n")
    _executable(bin_dir / "torchrun", "#!/bin/sh\nexit 0\n")
    fake_ds = root / "site" / "deepspeed"  # find_spec('deepspeed') must succeed for the DeepSpeed config
    fake_ds.mkdir(parents=True)
    (fake_ds / "__init__.py").write_text("")
    return bin_dir / "python"


@pytest.mark.parametrize("config,visible,expected", [
    ("gpu_full_zero3", "0", {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "1"}),   # the defect: one GPU + ZeRO-3
    ("gpu_lora", "0,1", {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}),       # several GPUs, no DeepSpeed
    ("cpu_tiny", "", {}),                                                      # CPU: a plain process
])
def test_train_passes_the_launch_settings_to_llamafactory(config, visible, expected, clean_launch_env, tmp_path,
                                                          dataset_dir):
    python = fake_main_venv(tmp_path)
    clean_launch_env.setenv("DENSEPOLICY_MAIN_PYTHON", str(python))
    clean_launch_env.setenv("CUDA_VISIBLE_DEVICES", visible)
    clean_launch_env.setenv("PYTHONPATH", str(tmp_path / "site"))
    with pytest.raises(TrainingError, match="exit 3"):
        train(config, dataset="tiny_tree_dpo", model=embedded_model_dir(), dataset_dir=dataset_dir,
              output_dir=tmp_path / "out", template_check=False, progress=False,
              overrides=["template=smollm2", "densepolicy_fast=false"])  # the plugin's launch: test_lf_fast.py
    launch = json.loads((tmp_path / "launch.json").read_text())
    assert launch["argv"] == ["train", str(tmp_path / "out" / "train_config.yaml")]
    env = launch["env"]
    assert env["PATH"].split(os.pathsep)[0] == str(python.parent)  # torchrun of the main venv comes first
    for key, value in expected.items():
        assert env[key] == value
    if expected:
        assert int(env["MASTER_PORT"]) > 0 and env["NNODES"] == "1"
    else:
        assert not any(key in env for key in TORCHRUN_VARS)


def test_deepspeed_config_without_deepspeed_installed_is_refused_before_training(clean_launch_env, tmp_path,
                                                                                 dataset_dir):
    python = fake_main_venv(tmp_path)  # no fake deepspeed on PYTHONPATH this time
    clean_launch_env.setenv("DENSEPOLICY_MAIN_PYTHON", str(python))
    clean_launch_env.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match="DeepSpeed is not installed for .*requirements-train-gpu.txt"):
        train("gpu_full_zero3", dataset="tiny_tree_dpo", model=embedded_model_dir(), dataset_dir=dataset_dir,
              output_dir=tmp_path / "out", overrides=["template=smollm2"], template_check=False, progress=False)
    assert not (tmp_path / "launch.json").exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ 2. warm-up over the run


def test_warmup_ratio_one_means_every_step_of_any_run():
    args = translate_warmup({"warmup_ratio": 1.0, "lr_scheduler_type": "cosine"}, "cfg")
    assert "warmup_ratio" not in args and args["warmup_steps"] == WHOLE_RUN_WARMUP
    for steps in (1, 2, 6, 697, 10_000, 3_000_000):
        # transformers 5.6 TrainingArguments.get_warmup_steps for a value below 1
        assert math.ceil(steps * args["warmup_steps"]) == steps
    assert translate_warmup({"warmup_ratio": 0.1}, "cfg") == {"warmup_steps": 0.1}
    assert translate_warmup({"warmup_steps": 20}, "cfg") == {"warmup_steps": 20}  # steps stay steps
    with pytest.raises(ConfigError, match="'warmup_ratio' must be a fraction of the run in \\[0, 1\\], got 4"):
        translate_warmup({"warmup_ratio": 4}, "cfg")
    with pytest.raises(ConfigError, match="'warmup_ratio' and 'warmup_steps' both set"):
        translate_warmup({"warmup_ratio": 0.5, "warmup_steps": 10}, "cfg")


def test_a_known_run_length_warms_up_for_whole_steps_and_never_spends_a_short_run_at_lr_zero():
    # transformers would warm up ceil(0.1 * 1) = 1 step: the only step of a 1-step run at learning rate 0
    assert translate_warmup({"warmup_ratio": 0.1, "max_steps": 1}, "cfg")["warmup_steps"] == 0
    assert translate_warmup({"warmup_ratio": 0.1, "max_steps": 9}, "cfg")["warmup_steps"] == 0
    assert translate_warmup({"warmup_ratio": 0.1, "max_steps": 30}, "cfg")["warmup_steps"] == 3
    assert translate_warmup({"warmup_ratio": 1.0, "max_steps": 30}, "cfg")["warmup_steps"] == WHOLE_RUN_WARMUP
    assert translate_warmup({"warmup_ratio": 0.1, "max_steps": -1}, "cfg")["warmup_steps"] == 0.1  # epochs


def test_command_line_warmup_replaces_the_configs(dataset_dir):
    keys = {"warmup_steps", "warmup_ratio", "max_steps"}
    base = dict(dataset="tiny_tree_dpo", model=embedded_model_dir(), dataset_dir=dataset_dir)
    args = build_train_args("gpu_full_zero3", **base, known_keys=_all_keys() | keys)
    assert args["warmup_steps"] == WHOLE_RUN_WARMUP and "warmup_ratio" not in args
    args = build_train_args("gpu_full_zero3", **base, overrides=["warmup_steps=10"], known_keys=_all_keys())
    assert args["warmup_steps"] == 10 and "warmup_ratio" not in args


def _all_keys():
    from densepolicy.training.train import llamafactory_keys

    return llamafactory_keys()


@pytest.mark.integration
def test_paper_schedule_rises_over_the_whole_run_in_real_llamafactory(tmp_path, dataset_dir):
    """gpu_full_zero3's schedule keys (lr 7.2e-8, cosine, warm-up over the epoch, one epoch), trained for
    real by LLaMA-Factory on a tiny random-weight Llama on CPU (DeepSpeed and bf16 off): the logged
    learning rate must rise at every step. Before the fix it peaked after one step and then decayed."""
    from densepolicy.testing.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", hidden_size=64)
    result = train("gpu_full_zero3", dataset="tiny_tree_dpo", dataset_dir=dataset_dir, model=model,
                   output_dir=tmp_path / "out", progress=False,
                   overrides=["deepspeed=null", "bf16=false", "template=smollm2", f"default_system={SMOLLM_SYSTEM}",
                              "cutoff_len=256", "val_size=0", "eval_strategy=no", "save_strategy=no",
                              "per_device_train_batch_size=2", "gradient_accumulation_steps=1",
                              "preprocessing_num_workers=1"])
    steps, rates = metric_series(read_log_history(result.model_dir / "trainer_state.json"), "learning_rate")
    assert steps == [1, 2, 3, 4]  # 8 pairs, batch 2, one epoch
    assert all(a < b for a, b in zip(rates, rates[1:])), rates
    assert rates[-1] == pytest.approx(7.2e-8 * 3 / 4)  # linear: step k of 4 trains at (k-1)/4 of the peak
    effective = yaml.safe_load((result.model_dir / "train_config.yaml").read_text())
    assert effective["eval_strategy"] == "no" and effective["lr_scheduler_type"] == "cosine"


# ------------------------------------------------------------------------------ 3. typed overrides


def test_overrides_get_llamafactorys_types(dataset_dir, tmp_path):
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy

    args = build_train_args("gpu_full_zero3", dataset="tiny_tree_dpo", model=embedded_model_dir(),
                            dataset_dir=dataset_dir, overrides=[
                                "eval_strategy=no", "save_strategy=no", "bf16=false", "plot_loss=yes",
                                "learning_rate=1e-6", "max_steps=6", "num_train_epochs=2", "deepspeed=null",
                                "report_to=none", "lora_target=all", "default_system=no"])
    assert args["eval_strategy"] == "no" and args["save_strategy"] == "no"
    assert args["bf16"] is False and args["plot_loss"] is True
    assert args["learning_rate"] == 1e-6 and isinstance(args["learning_rate"], float)
    assert args["max_steps"] == 6 and isinstance(args["max_steps"], int)
    assert args["num_train_epochs"] == 2.0 and args["deepspeed"] is None
    assert args["report_to"] == "none" and args["default_system"] == "no"  # text keys keep the text typed
    # what LLaMA-Factory will read back from the effective YAML
    dumped = yaml.safe_load(yaml.safe_dump(args))
    assert IntervalStrategy(dumped["eval_strategy"]) is IntervalStrategy.NO
    assert SaveStrategy(dumped["save_strategy"]) is SaveStrategy.NO


@pytest.mark.parametrize("override,message", [
    ("bf16=maybe", "key 'bf16' expects true/false, got 'maybe'"),
    ("max_steps=1.5", "key 'max_steps' expects an integer, got '1.5'"),
    ("eval_strategy=sometimes", "key 'eval_strategy' expects one of 'no', 'steps', 'epoch', got 'sometimes'"),
    ("learning_rate=fast", "key 'learning_rate' expects a number, got 'fast'"),
    ("pref_loss=hinge2", "key 'pref_loss' expects one of 'sigmoid', 'hinge'"),
])
def test_wrong_types_are_refused_naming_the_key(override, message, dataset_dir):
    with pytest.raises(ConfigError, match="command line: " + message.replace("(", "\\(").replace(")", "\\)")):
        build_train_args("cpu_tiny", dataset="tiny_tree_dpo", model=embedded_model_dir(), dataset_dir=dataset_dir,
                         overrides=[override])


def test_unquoted_no_in_a_yaml_file_is_refused_for_text_keys(dataset_dir, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text((PROJECT_ROOT / "TreeDPO/configs/cpu_tiny.yaml").read_text()
                      + "\neval_strategy: no\nlora_target: no\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: key 'lora_target' expects a string \(YAML reads an unquoted"):
        build_train_args(config, dataset="tiny_tree_dpo", model=embedded_model_dir(), dataset_dir=dataset_dir)


def test_cli_refuses_a_bad_override_in_one_line(dataset_dir):
    proc = subprocess.run([sys.executable, "TreeDPO/train.py", "cpu_tiny", "--dataset", "tiny_tree_dpo",
                           "--dataset-dir", str(dataset_dir), "eval_strategy=sometimes"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: command line: key 'eval_strategy' expects one of 'no', 'steps', "
                                   "'epoch', got 'sometimes'")
