"""Warm start: the cached, stamped model directory (a second call does not rebuild; a changed input does;
a failed build keeps the old model; a foreign directory is never replaced) and the real build on a tiny
expert dataset with LLaMA-Factory."""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from densepolicy.config import ConfigError, parse_overrides
from densepolicy.file_lock import lock_path, read_holder
from densepolicy.paths import PROJECT_ROOT
from densepolicy.training import warm_start as ws
from densepolicy.training import expert_data
from densepolicy.training.expert_data import ExpertDataConfig
from densepolicy.training.train import TrainingError, TrainResult, check_servable


def _fake_model(path: Path, marker: str = "base") -> Path:
    """A directory that passes check_servable (no real weights)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "marker": marker}))
    (path / "model.safetensors").write_bytes(marker.encode() * 100)
    (path / "tokenizer.json").write_text("{}")
    (path / "tokenizer_config.json").write_text("{}")
    (path / "chat_template.jinja").write_text("{{ messages }}")
    return path


class Recorder:
    """Stands in for EXPERT's dataset builder and for LLaMA-Factory; counts the builds."""

    def __init__(self):
        self.datasets: list = []
        self.trainings: list[dict] = []
        self.fail_training = False

    def load_expert_data_config(self, overrides=()):
        """The real config class (every key configs/warm_start.yaml may set), with small counts."""
        from densepolicy.config import apply_overrides

        small = ExpertDataConfig(seed=0, gsm8k=3, babyai=2, alfworld=0)
        return apply_overrides(small, list(overrides)) if overrides else small

    def build_expert_dataset(self, cfg, dataset_dir=None, overwrite=False):
        assert overwrite and dataset_dir is not None
        self.datasets.append(cfg)
        dataset_dir.mkdir(parents=True)
        (dataset_dir / f"{cfg.name}.json").write_text("[]")
        return types.SimpleNamespace(name=cfg.name, path=dataset_dir / f"{cfg.name}.json", counts=cfg.wanted(),
                                     attempted={k: v + 1 for k, v in cfg.wanted().items()},
                                     token_stats={k: {"mean": 100.0} for k in cfg.wanted()})

    def train(self, config, dataset=None, model=None, output_dir=None, overrides=None, dataset_dir=None, **_):
        self.trainings.append({"config": config, "dataset": dataset, "model": model, "overrides": overrides,
                               "dataset_dir": dataset_dir})
        if self.fail_training:
            raise TrainingError("llamafactory-cli train failed (exit 1)")
        out = _fake_model(Path(output_dir), marker=f"trained{len(self.trainings)}")
        return TrainResult(out, out / "train_config.yaml", out / "train.log", [], 12.0, 0.0, {"train_loss": 0.5})


@pytest.fixture
def fake(monkeypatch, tmp_path):
    rec = Recorder()
    monkeypatch.setattr(expert_data, "load_expert_data_config", rec.load_expert_data_config)
    monkeypatch.setattr(expert_data, "build_expert_dataset", rec.build_expert_dataset)
    monkeypatch.setattr("densepolicy.training.train.train", rec.train)
    rec.base = _fake_model(tmp_path / "base")
    rec.out = tmp_path / "models" / "warm"
    rec.args = [f"base_model={rec.base}", f"output_dir={rec.out}", "expert_data={gsm8k: 3, babyai: 2, alfworld: 0}"]
    return rec


def test_first_call_builds_second_call_returns_the_cache(fake):
    logs: list[str] = []
    first = ws.ensure_warm_start(fake.args, log=logs.append)
    assert first == fake.out and check_servable(first)
    assert len(fake.trainings) == 1 and len(fake.datasets) == 1
    assert fake.trainings[0]["config"] == "cpu_sft" and fake.trainings[0]["dataset"] == "expert_sft"
    assert fake.trainings[0]["model"] == str(fake.base)
    assert "building" in logs[0] and "(absent)" in logs[0] and "about 15 min" in logs[0]
    assert logs[-1].startswith(f"[warm-start] built {fake.out} in ")
    info = json.loads((first / "warm_start.json").read_text())
    assert info["expert_data"]["counts"] == {"gsm8k": 3, "babyai": 2}
    assert (first / "sft_data" / "expert_sft.json").is_file()
    assert not list(first.parent.glob(".*.building"))

    logs.clear()
    assert ws.ensure_warm_start(fake.args, log=logs.append) == first
    assert len(fake.trainings) == 1 and logs == []
    assert ws.warm_start_state(fake.args).current


@pytest.mark.parametrize("change", ["sft_overrides.learning_rate=5e-5", "expert_data.seed=3",
                                    "expert_data.babyai=7", "expert_data.prompt_style=original", "base_model",
                                    "sft_config"])
def test_a_changed_input_rebuilds(fake, change, tmp_path):
    ws.ensure_warm_start(fake.args, log=lambda _: None)
    args = list(fake.args)
    if change == "base_model":  # same path, new content
        (fake.base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "v": 2}))
    elif change == "sft_config":
        other = tmp_path / "my_sft.yaml"
        other.write_text((PROJECT_ROOT / "TreeDPO/configs/cpu_sft.yaml").read_text() + "max_steps: 3\n")
        args.append(f"sft_config={other}")
    else:
        args.append(change)
    state = ws.warm_start_state(args)
    assert not state.current and state.reason == "stale (its inputs changed)"
    logs: list[str] = []
    ws.ensure_warm_start(args, log=logs.append)
    assert len(fake.trainings) == 2 and "stale (its inputs changed)" in logs[0]
    assert "about 0 min" in logs[0]  # the announced time is the last build's
    if change.startswith("sft_overrides"):
        assert fake.trainings[1]["overrides"] == ["learning_rate=5e-5"]
    if change.startswith("expert_data.babyai"):
        assert fake.datasets[1].wanted() == {"gsm8k": 3, "babyai": 7}
    if change.startswith("expert_data.prompt_style"):  # the trajectories are rendered in the sampler's style
        assert (fake.datasets[0].prompt_style, fake.datasets[1].prompt_style) == ("compact", "original")
    ws.ensure_warm_start(args, log=lambda _: None)
    assert len(fake.trainings) == 2


def test_rebuild_flag_rebuilds_an_up_to_date_model(fake):
    ws.ensure_warm_start(fake.args, log=lambda _: None)
    logs: list[str] = []
    ws.ensure_warm_start(fake.args, rebuild=True, log=logs.append)
    assert len(fake.trainings) == 2 and "rebuild requested" in logs[0]


def test_failed_build_keeps_the_previous_model(fake):
    ws.ensure_warm_start(fake.args, log=lambda _: None)
    before = (fake.out / "model.safetensors").read_bytes()
    fake.fail_training = True
    with pytest.raises(TrainingError):
        ws.ensure_warm_start(fake.args + ["sft_overrides.num_train_epochs=1"], log=lambda _: None)
    assert (fake.out / "model.safetensors").read_bytes() == before
    assert ws.warm_start_state(fake.args).current  # still valid for its own inputs


def _wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_processes_asking_at_once_build_once_and_the_other_reuses_it(fake, monkeypatch, tmp_path):
    """The demo and the experiment (or jobs on two nodes) ask for the warm start at once: one process builds
    under the build lock (densepolicy.file_lock), the other waits for it and returns the model it built."""
    started, release, trainings = tmp_path / "training-started", tmp_path / "release", tmp_path / "trainings"

    def slow_train(*args, **kwargs):  # the stand-in for LLaMA-Factory, held until the other process waits
        with open(trainings, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        started.touch()
        _wait_for(release.exists, "the test to release the training")
        return fake.train(*args, **kwargs)

    monkeypatch.setattr("densepolicy.training.train.train", slow_train)

    def ask(log_file: Path) -> None:  # one process asking for the warm start (forked: it keeps the fakes)
        with open(log_file, "a") as fh:
            def log(line: str) -> None:
                fh.write(line + "\n")
                fh.flush()
            path = ws.ensure_warm_start(fake.args, log=log)
            log(f"RESULT {path}")

    fork = multiprocessing.get_context("fork")
    builder = fork.Process(target=ask, args=(tmp_path / "builder.log",))
    builder.start()
    _wait_for(started.exists, "the first process to start training")
    waiter = fork.Process(target=ask, args=(tmp_path / "waiter.log",))
    waiter.start()
    waiter_log = tmp_path / "waiter.log"
    _wait_for(lambda: waiter_log.exists() and "waiting" in waiter_log.read_text(), "the second process to wait")
    assert waiter.is_alive(), "the second process must wait while the build runs, not return"
    release.touch()
    for proc in (builder, waiter):
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert trainings.read_text().split() == [str(builder.pid)]  # one build, by the first process
    log = waiter_log.read_text()
    assert f"is being built by pid {builder.pid} on host {socket.gethostname()} (warm-start build" in log
    assert "building" not in log and log.splitlines()[-1] == f"RESULT {fake.out}"
    assert (tmp_path / "builder.log").read_text().splitlines()[-1] == f"RESULT {fake.out}"
    assert check_servable(fake.out) and not lock_path(fake.out).exists()


def test_the_lock_of_a_crashed_build_does_not_block_the_next_one(fake):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = lock_path(fake.out)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "crashed",
                                "purpose": "warm-start build"}))
    logs: list[str] = []
    assert ws.ensure_warm_start(fake.args, log=logs.append) == fake.out
    assert len(fake.trainings) == 1 and not any("waiting" in line for line in logs) and not lock.exists()


def test_a_build_that_lost_its_lock_does_not_replace_the_model(fake, monkeypatch):
    def train_then_lose_the_lock(*args, **kwargs):  # e.g. a frozen node: another build took the lock over
        result = fake.train(*args, **kwargs)
        lock_path(fake.out).write_text(json.dumps({"host": "other-node", "pid": 1, "token": "theirs"}))
        return result

    monkeypatch.setattr("densepolicy.training.train.train", train_then_lose_the_lock)
    with pytest.raises(TrainingError, match="lost the lock"):
        ws.ensure_warm_start(fake.args, log=lambda _: None)
    assert not fake.out.exists()
    assert read_holder(lock_path(fake.out))["token"] == "theirs"  # the other build's lock is left alone


def test_foreign_directory_is_never_replaced(fake):
    _fake_model(fake.out, marker="precious")
    with pytest.raises(ConfigError, match="was not built by the warm start"):
        ws.ensure_warm_start(fake.args, log=lambda _: None)
    assert b"precious" in (fake.out / "model.safetensors").read_bytes() and not fake.trainings


def test_empty_expert_dataset_is_an_error(fake):
    with pytest.raises(ConfigError, match="expert dataset is empty"):
        ws.ensure_warm_start(fake.args + ["expert_data.gsm8k=0", "expert_data.babyai=0"],
                             log=lambda _: None)
    assert not fake.out.exists()


def test_sft_config_must_be_an_sft_stage(fake):
    with pytest.raises(ConfigError, match="has stage 'dpo', expected 'sft'"):
        ws.ensure_warm_start(fake.args + ["sft_config=cpu_tiny"], log=lambda _: None)


def test_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="unknown key 'sft_overides'"):
        ws.load_warm_start_config(["sft_overides.learning_rate=1e-5"])


def test_flattened_overrides_parse_back_to_the_same_values():
    values = {"learning_rate": 5e-5, "a": {"b": [1, 2], "c": "x y", "d": True}, "template": "smollm2"}
    assert parse_overrides(ws.flatten_overrides(values)) == values


def test_default_output_is_the_registered_model(tmp_path):
    from densepolicy.serving.models import load_registry
    from densepolicy.paths import resolve

    cfg = ws.load_warm_start_config()
    entry = load_registry().models["SmolLM2-135M-Warmstart"]
    assert resolve(entry.path) == resolve(cfg.output_dir)
    assert cfg.sft_config == "cpu_sft" and cfg.base_model == "SmolLM2-135M-Instruct"


def test_cli_check_reports_absent_model(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/warm_start.py", "--check", f"output_dir={tmp_path / 'none'}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip() == f"{tmp_path / 'none'}: absent"
