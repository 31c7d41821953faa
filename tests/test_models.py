"""Model registry: names vs directories, context length from the model files, clear errors."""
from __future__ import annotations

import json

import pytest

from densepolicy.config import ConfigError
from densepolicy.serving.models import ModelEntry, ModelError, ModelRegistry, load_registry, resolve_model
from densepolicy.paths import PROJECT_ROOT


def make_model(path, max_pos=8192, model_max_length=None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"max_position_embeddings": max_pos} if max_pos else {}))
    if model_max_length is not None:
        (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": model_max_length}))
    return path


def registry(tmp_path, **entries):
    return ModelRegistry(default="a", models={k: ModelEntry(**v) for k, v in entries.items()})


def test_registered_name_gets_its_entry_and_capped_context(tmp_path):
    model_dir = make_model(tmp_path / "a-dir", max_pos=8192, model_max_length=1e30)  # 1e30 = "no limit"
    reg = registry(tmp_path, a={"path": str(model_dir), "max_model_len": 2048, "stop": ["[INST]"],
                                "served_name": "a-served", "dtype": "bfloat16"})
    spec = resolve_model("a", registry=reg)
    assert (spec.name, spec.served_name, spec.context_length) == ("a", "a-served", 2048)
    assert spec.stop == ("[INST]",) and spec.dtype == "bfloat16" and spec.path == model_dir.resolve()
    assert resolve_model(None, registry=reg).name == "a"  # the default
    assert resolve_model("a", max_model_len=4096, registry=reg).context_length == 4096  # serving override
    assert resolve_model("a", max_model_len=100_000, registry=reg).context_length == 8192  # model's own limit


def test_tokenizer_limit_below_position_embeddings_wins(tmp_path):
    model_dir = make_model(tmp_path / "m", max_pos=4096, model_max_length=1024)
    assert resolve_model(str(model_dir), registry=registry(tmp_path)).context_length == 1024


def test_plain_directory_is_named_after_itself(tmp_path):
    model_dir = make_model(tmp_path / "saves" / "tree_dpo_run")
    spec = resolve_model(str(model_dir), registry=registry(tmp_path))
    assert spec.name == spec.served_name == "tree_dpo_run" and spec.context_length == 8192 and spec.stop == ()


def test_directory_of_a_registered_model_uses_the_entry(tmp_path):
    model_dir = make_model(tmp_path / "a-dir")
    reg = registry(tmp_path, a={"path": str(model_dir), "max_model_len": 512})
    spec = resolve_model(str(model_dir), registry=reg)
    assert spec.name == "a" and spec.context_length == 512


def test_missing_directory_of_registered_model_names_the_path(tmp_path):
    reg = registry(tmp_path, a={"path": str(tmp_path / "gone")})
    with pytest.raises(ModelError, match=f"model directory of 'a' not found: {tmp_path / 'gone'}"):
        resolve_model("a", registry=reg)


def test_unknown_name_lists_the_known_ones(tmp_path):
    reg = registry(tmp_path, a={"path": "x"}, b={"path": "y"})
    with pytest.raises(ModelError, match=r"'nope' is neither a registered name \(a, b\)"):
        resolve_model("nope", registry=reg)


def test_directory_without_config_or_length(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"), registry=registry(tmp_path))
    model_dir = make_model(tmp_path / "nolen", max_pos=None)
    with pytest.raises(ModelError, match="context length .* unknown"):
        resolve_model(str(model_dir), registry=registry(tmp_path))
    assert resolve_model(str(model_dir), max_model_len=300, registry=registry(tmp_path)).context_length == 300


def test_project_registry_loads_and_has_the_embedded_model():
    reg = load_registry()
    assert reg.default == "SmolLM2-135M-Instruct"
    assert reg.models["SmolLM2-135M-Instruct"].path == "models/SmolLM2-135M-Instruct"
    assert reg.models["Meta-Llama-3-8B-Instruct"].path == "TreeDPO/models/Meta-Llama-3-8B-Instruct"


def test_registry_with_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  x:\n    path: a\n    stops: []\n")
    with pytest.raises(ConfigError, match=f"{bad}: unknown key 'models.x.stops'"):
        load_registry(bad)


@pytest.mark.skipif(not (PROJECT_ROOT / "models" / "SmolLM2-135M-Instruct" / "config.json").is_file(),
                    reason="embedded model not built (make setup); covered by the integration tests")
def test_embedded_model_context_is_read_from_its_files():
    spec = resolve_model("SmolLM2-135M-Instruct")
    assert spec.context_length == 2048  # min(config.json 8192, registry max_model_len 2048)
