"""The environment specs (envs/spec.py): one registry entry per env, read by the other stages."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from envs import ENV_SPECS, EnvError, env_spec, load_env, spec_for_dataset
from envs.base import Env

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", sorted(ENV_SPECS))
def test_every_spec_names_a_loadable_env_of_its_family(name):
    spec = env_spec(name)
    module_name, factory = spec.factory.split(":")
    cls = getattr(importlib.import_module(module_name), factory)
    assert issubclass(cls, Env) and cls.name == spec.name
    assert module_name.startswith(f"envs.{spec.family}_"), "an env's own modules are envs/<family>_*.py"
    assert spec.train_split and spec.evaluation_splits and spec.train_split not in spec.evaluation_splits
    assert spec.packages and spec.title
    assert bool(spec.task_types) == (spec.score == "task_types") == bool(spec.task_type_of)


def test_every_loadable_env_has_a_spec():
    # the env classes of the families' modules are exactly the registered ones
    classes = set()
    for path in sorted((ROOT / "envs").glob("*_env.py")):
        module = importlib.import_module(f"envs.{path.stem}")
        classes |= {f"{module.__name__}:{n}" for n, c in vars(module).items()
                    if isinstance(c, type) and issubclass(c, Env) and c.__module__ == module.__name__
                    and not n.startswith("_")}
    assert classes == {spec.factory for spec in ENV_SPECS.values()}


def test_unknown_env_is_named_with_the_known_ones():
    with pytest.raises(EnvError) as info:
        load_env("chess", split="test")
    message = str(info.value)
    assert "'chess'" in message and all(name in message for name in ENV_SPECS)
    with pytest.raises(EnvError, match="'chess'"):
        env_spec("chess")


def test_custom_module_factory_env_is_loaded_as_before():
    from densepolicy.sampling.config import resolve_sampler_config
    from densepolicy.sampling.worker import load_task_env
    from tests.harness.fakes import ScriptedMathEnv

    cfg = resolve_sampler_config("codeact_agent", "gsm8k", ["env=tests.harness.fakes:ScriptedMathEnv", "prompt_style=compact"])
    env = load_task_env(cfg)
    assert isinstance(env, ScriptedMathEnv) and env.prompt_style == "compact"
    assert spec_for_dataset(env.name) is None  # no spec: scored as an "other" dataset


def test_datasets_map_to_their_env():
    assert spec_for_dataset("gsm8k").name == "gsm8k" and spec_for_dataset("math").name == "math"
    assert spec_for_dataset("alfworld_put").name == "alfworld"  # per-type datasets of an env with task types
    assert spec_for_dataset("babyai").name == "babyai"
    assert spec_for_dataset("babyai_x") is None and spec_for_dataset("math_x") is None
    assert spec_for_dataset("toy") is None


def test_alfworld_task_types_are_the_games_table():
    from envs.alfworld_games import TASK_TYPE_PREFIXES

    spec = env_spec("alfworld")
    assert sorted(spec.task_types) == sorted(TASK_TYPE_PREFIXES.values())
    assert spec.task_type("pick_cool_then_place_in_recep-Mug-None-Desk-308/trial_1") == "cool"
    assert spec.task_type("not_a_game/trial_1") == "" and env_spec("babyai").task_type("GoTo:1") == ""


def test_provenance_reads_each_envs_family_and_packages_from_its_spec(monkeypatch):
    # an env's record lists its spec's packages, and its code files leave out the other families' modules
    from densepolicy.provenance import versions

    monkeypatch.setattr(versions, "_version", lambda package: "1.0")
    for name, spec in ENV_SPECS.items():
        record = versions.env_record(name, spec.train_split)
        assert record["packages"] == {package: "1.0" for package in spec.packages}
        others = {s.family for s in ENV_SPECS.values()} - {spec.family}
        names = [path.name for path in versions.env_code_files(name)]
        assert names and not [n for n in names if any(n.startswith(f + "_") for f in others)]
        assert any(n.startswith(spec.family + "_") for n in names)


def test_split_facts_match_the_envs():
    # the train and evaluation splits a spec names are splits its env accepts
    from envs.alfworld_games import SPLIT_DIRS
    from envs.babyai_levels import split_task_ids
    from envs.math_env import GSM8KEnv, MATHEnv

    for cls in (GSM8KEnv, MATHEnv):
        spec = env_spec(cls.name)
        assert {spec.train_split, *spec.evaluation_splits} <= set(cls.SPLITS)
    alf = env_spec("alfworld")
    assert {alf.train_split, *alf.evaluation_splits} <= set(SPLIT_DIRS)
    baby = env_spec("babyai")
    for split in (baby.train_split, *baby.evaluation_splits):
        assert split_task_ids(split, 1)


def test_every_env_says_whether_it_has_in_context_examples_and_an_expert():
    # the registries of the layers above envs are keyed by the spec names: one entry per env each
    from agents.incontext import EXAMPLE_POOLS, example_pool
    from densepolicy.training.expert import EXPERTS, expert_for

    assert list(EXAMPLE_POOLS) == list(ENV_SPECS) and list(EXPERTS) == list(ENV_SPECS)
    for name, module in EXAMPLE_POOLS.items():
        assert (len(example_pool(name)) > 0) == (module is not None)
    assert example_pool("scripted") == []  # a custom env has none
    for expert in EXPERTS.values():
        assert expert is None or (expert.plan or expert.plans) and expert.batch >= 1
    with pytest.raises(ValueError, match="no expert for env 'chess'; expected one of"):
        expert_for("chess")


def test_every_env_with_an_expert_has_a_count_in_the_expert_data_config():
    import dataclasses

    import yaml

    from densepolicy.training.expert import EXPERT_ENVS
    from densepolicy.training.expert_data import CONFIG_PATH, ExpertDataConfig

    fields = {f.name: f.type for f in dataclasses.fields(ExpertDataConfig)}
    assert all(fields.get(name) in (int, "int") for name in EXPERT_ENVS)
    assert set(EXPERT_ENVS) <= set(yaml.safe_load(CONFIG_PATH.read_text()))
