"""The cached LLaMA-Factory field schema (`densepolicy.training.lf_fields`): stand-in types convert and refuse
values exactly as the real ones do, the cache is used, keyed by the installed versions, and rebuilt when damaged.
The check against LLaMA-Factory's own 350 fields is tests/integration/training/test_lf_fields_real.py."""
from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytest

from densepolicy.training import lf_fields
from densepolicy.training.lf_args import parse_lf_overrides
from tests.harness.coerce_probe import PROBE_VALUES, coerce_outcome


class IntervalStrategy(enum.Enum):  # the shape of transformers' strategies
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class GenerationConfig:  # a class LLaMA-Factory parses itself
    pass


SYNTHETIC: dict[str, Any] = {
    "bf16": bool,
    "max_steps": int,
    "seed": Optional[int],  # noqa: UP045 - LLaMA-Factory spells both forms; both are covered
    "learning_rate": float,
    "output_dir": str,
    "run_name": str | None,
    "stage": Literal["pt", "sft", "dpo"],
    "mix_strategy": Optional[Literal["concat", "interleave"]],  # noqa: UP045
    "eval_strategy": Union[IntervalStrategy, str],  # noqa: UP007
    "deepspeed": dict | str | None,
    "target": list[str],
    "generation_config": str | Path | GenerationConfig | None,
    "push_to_hub_token": Union[str, None, Literal[False]],  # noqa: UP007
    "anything": Any,
}
def test_stand_in_types_convert_and_refuse_like_the_real_ones():
    encoded = json.loads(json.dumps(lf_fields.encode_fields(SYNTHETIC)))  # what the cache file keeps
    stand_ins = {key: lf_fields.decode_type(spec) for key, spec in encoded.items()}
    assert stand_ins.keys() == SYNTHETIC.keys()
    compared = 0
    for key in SYNTHETIC:
        for value in PROBE_VALUES:
            assert coerce_outcome(stand_ins, key, value) == coerce_outcome(SYNTHETIC, key, value), (key, value)
            compared += 1
        for override in ("eval_strategy=no", "output_dir=007", "max_steps=1e3", f"{key}=yes"):
            values, raw = parse_lf_overrides([override])
            name = next(iter(values))
            if name == key:
                assert coerce_outcome(stand_ins, key, values[key], raw.get(key)) == \
                    coerce_outcome(SYNTHETIC, key, values[key], raw.get(key)), (key, override)
    assert compared == len(SYNTHETIC) * len(PROBE_VALUES)
    # not vacuous: the stand-ins keep the choices and the refusals
    assert coerce_outcome(stand_ins, "eval_strategy", False) == ("ok", ("str", "'no'"))
    assert coerce_outcome(stand_ins, "stage", "ppo")[0] == "error"


def test_a_type_without_a_stand_in_is_not_cached():
    with pytest.raises(lf_fields.Uncacheable):
        lf_fields.encode_fields({"odd": Literal[object()]})


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """llamafactory_fields() over SYNTHETIC, with a cache file in tmp_path; returns the list of dataclass reads."""
    reads: list[int] = []
    monkeypatch.setattr(lf_fields, "fields_from_dataclasses", lambda: reads.append(1) or dict(SYNTHETIC))
    monkeypatch.setattr(lf_fields, "cache_file", lambda: tmp_path / "lf" / "key.json")
    lf_fields.llamafactory_fields.cache_clear()
    yield reads
    lf_fields.llamafactory_fields.cache_clear()


def test_the_fields_are_read_once_then_come_from_the_cache(isolated_cache, tmp_path):
    first = lf_fields.llamafactory_fields()
    assert isolated_cache == [1] and first is not None
    assert json.loads((tmp_path / "lf" / "key.json").read_text())["schema"] == lf_fields.SCHEMA_VERSION
    lf_fields.llamafactory_fields.cache_clear()  # a new process
    second = lf_fields.llamafactory_fields()
    assert isolated_cache == [1], "the cache file was not used"
    assert second.keys() == SYNTHETIC.keys()
    assert coerce_outcome(second, "eval_strategy", "EPOCH") == coerce_outcome(SYNTHETIC, "eval_strategy", "EPOCH")


@pytest.mark.parametrize("damage", ["{not json", json.dumps({"schema": 999, "fields": {}}),
                                    json.dumps({"schema": lf_fields.SCHEMA_VERSION, "fields": {"x": {"bad": 1}}}),
                                    json.dumps([1, 2])])
def test_a_damaged_cache_is_read_again_and_rewritten(isolated_cache, tmp_path, damage):
    path = tmp_path / "lf" / "key.json"
    path.parent.mkdir(parents=True)
    path.write_text(damage)
    assert lf_fields.llamafactory_fields().keys() == SYNTHETIC.keys()
    assert isolated_cache == [1]
    assert json.loads(path.read_text())["fields"] == lf_fields.encode_fields(SYNTHETIC)


def test_an_uncacheable_schema_is_read_every_time(isolated_cache, tmp_path, monkeypatch):
    odd = {**SYNTHETIC, "odd": Literal[object()]}
    monkeypatch.setattr(lf_fields, "fields_from_dataclasses", lambda: isolated_cache.append(1) or dict(odd))
    assert "odd" in lf_fields.llamafactory_fields()
    assert not (tmp_path / "lf" / "key.json").exists()


def test_the_cache_key_follows_the_installed_versions(monkeypatch, tmp_path):
    monkeypatch.setenv("DENSEPOLICY_CACHE_DIR", str(tmp_path))
    if lf_fields.cache_file() is None:
        pytest.skip("LLaMA-Factory is not installed in this interpreter")
    before = lf_fields.cache_file()
    assert before.parent == tmp_path / "llamafactory_fields"
    real_version = lf_fields.importlib.metadata.version
    monkeypatch.setattr(lf_fields.importlib.metadata, "version",
                        lambda name: "0.0-other" if name == "transformers" else real_version(name))
    assert lf_fields.cache_file() != before


def test_an_unwritable_cache_folder_does_not_stop_the_check(isolated_cache, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setattr(lf_fields, "cache_file", lambda: blocker / "key.json")
    assert lf_fields.llamafactory_fields().keys() == SYNTHETIC.keys()
    assert isolated_cache == [1] and blocker.is_file()
