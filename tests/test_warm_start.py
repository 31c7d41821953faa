"""Warm start: the cached, stamped model directory (a second call does not rebuild; a changed input does;
a failed build keeps the old model; a foreign directory is never replaced) and the real build on a tiny
expert dataset with LLaMA-Factory."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from densepolicy.config import ConfigError, parse_overrides
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
