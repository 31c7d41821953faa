"""The sampler's settings: each tree / agent setting defined once (agents.tree.TreeSettings,
agents.codeact_agent.AgentSettings) and nested in SamplerConfig, written with or without the section
name, and run directories made before the sections existed still resume (same sidecar, same record)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from agents.codeact_agent import AgentSettings
from agents.tree import TreeRules, TreeSettings
from densepolicy.config import ConfigError, describe
from densepolicy.sampling.config import SECTIONS, SamplerConfig, resolve_sampler_config, sampler_settings
from densepolicy.sampling.shard_identity import check_shard_settings, settings_diffs, shard_settings

# `shard_settings(resolve_sampler_config("codeact_agent_tree", "gsm8k"), "SmolLM2-135M-Instruct")` as the
# code wrote it before the tree and agent settings became sections (commit ec64759): the sidecar format
# of every run directory made so far.
TODAY_TREE = {
    "arithmetic": "fixed", "base": 10, "batch_siblings": False, "context_length": None,
    "contrastive_method": "temperature", "data_dir": None, "dataset": "gsm8k", "dedup": "fixed", "depth_weight": 0.2,
    "env": "gsm8k", "explore_weight": 2.0, "gap_power": 0.25, "gap_weight": 0.8, "in_context_number": 8,
    "incontext_draw": "task", "max_empty_iterations": 1000, "max_runs": 1000, "max_sample_number": 256,
    "max_steps": 32, "max_tasks": None, "max_tokens": 512, "max_turn": None, "method": "codeact_agent_tree",
    "min_completion_tokens": 120, "model": "SmolLM2-135M-Instruct", "overflow_counts_as_failure": False,
    "preset": "none", "prompt_style": "compact", "proposal_factor": 3, "proposals_per_window": 2, "seed": 62471893,
    "select_leaves": False, "split": "train", "stop": ["End Action"], "stop_if_uniform_after": 0, "task_ids": [],
    "task_type": None, "temperature": 0.0, "temperature_cycle": [0.7, 1.0, 0.5], "thre_max": 8, "thre_value": 0.5,
    "top_p": 1.0, "update_rows": "fixed", "visit_counting": "fixed", "window_size": 16}
TODAY_AGENT = {**TODAY_TREE, "method": "codeact_agent", "split": "test", "max_steps": None, "max_turn": 10,
               "max_sample_number": 512, "window_size": 8}
MODEL = "SmolLM2-135M-Instruct"


@pytest.mark.parametrize("method,today", [("codeact_agent_tree", TODAY_TREE), ("codeact_agent", TODAY_AGENT)])
def test_settings_are_recorded_as_before_the_sections(method, today):
    """The sidecar and the provenance record both store `sampler_settings`: the same flat keys and values."""
    cfg = resolve_sampler_config(method, "gsm8k")
    assert shard_settings(cfg, MODEL) == today
    assert {**sampler_settings(cfg), "model": MODEL}.items() >= today.items()


def test_a_run_directory_written_before_the_sections_resumes(tmp_path):
    """A shard with results and a sidecar in the old format is the same run (and a changed key is not)."""
    stem = "gsm8k.train.0"
    (tmp_path / f"{stem}.csv").write_text("task_id,status\n1290,done\n")
    (tmp_path / f"{stem}.settings.json").write_text(json.dumps(TODAY_TREE, indent=1))
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k")
    assert check_shard_settings(tmp_path, stem, cfg, MODEL) is None           # accepted, nothing to write
    other = resolve_sampler_config("codeact_agent_tree", "gsm8k", ["tree.base=3"])
    with pytest.raises(ConfigError, match=r"other settings \(base: 10 -> 3\)"):
        check_shard_settings(tmp_path, stem, other, MODEL)
    assert settings_diffs(TODAY_TREE, shard_settings(cfg, MODEL)) == []


def test_flat_and_nested_keys_are_the_same_setting():
    flat = resolve_sampler_config("codeact_agent_tree", "gsm8k", ["base=3", "max_steps=4", "dedup=faithful"])
    nested = resolve_sampler_config("codeact_agent_tree", "gsm8k",
                                    ["tree.base=3", "max_steps=4", "tree.dedup=faithful"])
    assert flat == nested and flat.tree.base == 3 and flat.tree.dedup == "faithful" and flat.max_steps == 4
    agent = resolve_sampler_config("codeact_agent", "gsm8k", ["max_turn=1", "agent.temperature=0.7"])
    assert (agent.agent.max_turn, agent.agent.temperature) == (1, 0.7)
    assert flat.tree.rules(flat.max_steps) == TreeRules(**dataclasses.asdict(flat.tree), max_steps=4)


def test_bad_keys_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"'base' is given twice, as base \(3\) and as tree.base \(4\)"):
        resolve_sampler_config("codeact_agent_tree", "gsm8k", ["base=3", "tree.base=4"])
    with pytest.raises(ConfigError, match=r"unknown key 'tree.nope' for TreeSettings"):
        resolve_sampler_config("codeact_agent_tree", "gsm8k", ["tree.nope=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'nope' for SamplerConfig"):
        resolve_sampler_config("codeact_agent_tree", "gsm8k", ["nope=1"])
    with pytest.raises(ConfigError, match=r"key 'window_size' must be >= 1, got 0"):
        resolve_sampler_config("codeact_agent_tree", "gsm8k", ["tree.window_size=0"])
    with pytest.raises(ConfigError, match=r"'gap_refresh' was removed"):
        resolve_sampler_config("codeact_agent_tree", "gsm8k", ["gap_refresh=fixed"])


def test_each_setting_has_one_flat_name_and_one_definition():
    """No section field shares a name with another setting (the flat keys are unambiguous), and the tree's
    defaults are TreeSettings's own (no second copy in SamplerConfig)."""
    assert SECTIONS == {"agent": AgentSettings, "tree": TreeSettings}
    names = [f.name for cls in (SamplerConfig, *SECTIONS.values()) for f in dataclasses.fields(cls)
             if f.name not in SECTIONS]
    assert len(names) == len(set(names))
    assert {f.name for f in dataclasses.fields(TreeRules)} == {f.name for f in dataclasses.fields(TreeSettings)} | {
        "max_steps"}
    text = describe(SamplerConfig)
    for key in ("tree.base (int, default 10)", "tree.thre_value", "agent.max_turn", "agent.temperature", "max_steps"):
        assert f"  {key}" in text
    assert all(line.split(":", 1)[1].strip() for line in text.splitlines())  # every key has its help


def test_a_setting_of_the_other_method_is_reported_naming_key_and_method(caplog, tmp_path):
    with caplog.at_level("WARNING", logger="densepolicy.sampling.config"):
        resolve_sampler_config("codeact_agent", "gsm8k", ["tree.base=3", "max_turn=1", "max_tokens=64"])
        resolve_sampler_config("codeact_agent_tree", "gsm8k", ["temperature=0.7", "max_steps=4", "window_size=2"])
    assert [r.getMessage() for r in caplog.records] == [
        "command line: key 'base' is a setting of codeact_agent_tree only; method codeact_agent ignores it",
        "command line: key 'temperature' is a setting of codeact_agent only; method codeact_agent_tree ignores it"]
    # in a task config's method section it is a mistake of the config: refused, naming the file and the key
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "t.yaml").write_text("env: gsm8k\ncodeact_agent:\n  max_turn: 2\n  window_size: 4\n")
    with pytest.raises(ConfigError, match=r"t.yaml: key 'window_size' in section 'codeact_agent' is a setting of "
                                          r"codeact_agent_tree only"):
        resolve_sampler_config("codeact_agent", "t", config_dir=tmp_path)


def test_the_loops_key_lists_raise_no_warning(caplog):
    """What configs/experiment.yaml and demo.yaml pass today: `sample:` lists to the tree, `evaluate:` lists
    (plus the screen's temperature and seed) to the agent, the `sampler:` keys to both."""
    shared = ["max_tokens=192", "request_timeout_s=900", "in_context_number=0", 'task_ids=["1290", "133"]']
    with caplog.at_level("WARNING", logger="densepolicy.sampling.config"):
        resolve_sampler_config("codeact_agent_tree", "gsm8k", [
            "max_steps=3", "base=3", "window_size=6", "max_sample_number=12", "max_runs=12",
            "stop_if_uniform_after=8", *shared])
        resolve_sampler_config("codeact_agent", "gsm8k", [
            "max_tasks=8", "max_turn=1", "max_steps=3", "split=train", "temperature=0.7", "seed=1100", *shared])
    assert caplog.records == []
