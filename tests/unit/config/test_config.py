"""The config loader (densepolicy/config.py): strict keys and types, overrides, clear errors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from densepolicy.config import ConfigError, describe, help_field, load_config, parse_overrides


@dataclass
class Tree:
    base: int = help_field(4, help="Children per node.")
    temperature: float = help_field(1.0, help="Sampling temperature.")


@dataclass
class Sampler:
    name: str = help_field("run", help="Run name.")
    method: Literal["codeact_agent", "codeact_agent_tree"] = help_field("codeact_agent", help="Method.")
    tree: Tree = help_field(help="Tree settings.", default_factory=Tree)
    stop: list[str] = help_field([], help="Stop strings.")
    limit: int | None = help_field(None, help="Task limit.")
    resume: bool = help_field(True, help="Resume.")


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "name: a\ntree:\n  base: 3\nstop: ['x']\n")
    cfg = load_config(Sampler, path, ["tree.temperature=0.7", "limit=5", "stop=[a, b]", "method=codeact_agent_tree"])
    assert cfg.name == "a" and cfg.tree.base == 3 and cfg.tree.temperature == 0.7
    assert cfg.limit == 5 and cfg.stop == ["a", "b"] and cfg.method == "codeact_agent_tree"
    assert load_config(Sampler, path, ["limit=null"]).limit is None


def test_int_is_accepted_for_float_but_not_the_reverse(tmp_path):
    assert load_config(Sampler, None, ["tree.temperature=1"]).tree.temperature == 1.0
    with pytest.raises(ConfigError, match="command line: key 'tree.base' expects an integer, got 2.5"):
        load_config(Sampler, None, ["tree.base=2.5"])


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "name: a\nbsae: 3\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'bsae' for Sampler"):
        load_config(Sampler, path)


def test_unknown_nested_key_in_file_and_override(tmp_path):
    path = write(tmp_path, "tree:\n  bsae: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'tree.bsae'"):
        load_config(Sampler, path)
    with pytest.raises(ConfigError, match="command line: unknown key 'bsae' for Tree"):
        load_config(Sampler, None, ["tree.bsae=3"])


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "resume: maybe\n")
    with pytest.raises(ConfigError, match=f"{path}: key 'resume' expects true/false, got 'maybe'"):
        load_config(Sampler, path)
    with pytest.raises(ConfigError, match="key 'stop' expects a list"):
        load_config(Sampler, None, ["stop=3"])


def test_literal_rejects_values_outside_the_choices():
    with pytest.raises(ConfigError, match=r"key 'method' must be one of \['codeact_agent', 'codeact_agent_tree'\]"):
        load_config(Sampler, None, ["method=tree"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'nope.yaml'}"):
        load_config(Sampler, tmp_path / "nope.yaml")


def test_malformed_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="malformed YAML in .*cfg.yaml"):
        load_config(Sampler, write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Sampler, write(tmp_path, "- a\n- b\n"))


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="override 'limit' is not of the form key=value"):
        parse_overrides(["limit"])


def test_section_of_a_file(tmp_path):
    path = write(tmp_path, "sampler:\n  name: s\nother: {}\n")
    assert load_config(Sampler, path, section="sampler").name == "s"
    with pytest.raises(ConfigError, match="no section 'missing'"):
        load_config(Sampler, path, section="missing")


def test_describe_lists_every_key_with_help():
    text = describe(Sampler)
    for key in ("name", "method", "tree.base", "tree.temperature", "stop", "limit", "resume"):
        assert f"  {key} (" in text
    assert "Children per node." in text
