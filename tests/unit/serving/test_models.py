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


def _llama_like(path, eot_id=128009):
    """A model directory in Llama-3-Instruct's layout: its chat template and the published special-token ids."""
    model_dir = make_model(path)
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": "{{ '<|start_header_id|>' + messages[0]['content'] | trim + '<|eot_id|>' }}",
        "added_tokens_decoder": {"128000": {"content": "<|begin_of_text|>", "special": True},
                                 "128001": {"content": "<|end_of_text|>", "special": True},
                                 str(eot_id): {"content": "<|eot_id|>", "special": True}}}))
    return model_dir


def test_stop_token_ids_come_from_the_registry_and_are_checked_against_the_tokenizer(tmp_path):
    """A checkpoint whose generation_config.json lacks <|eot_id|> would generate to max_tokens: the registry's
    stop_token_ids go with every request; an id that is not one of the model's special tokens is refused."""
    model_dir = _llama_like(tmp_path / "llama")
    spec = resolve_model("a", registry=registry(tmp_path, a={"path": str(model_dir), "stop_token_ids": [128009]}))
    assert spec.stop_token_ids == (128009,)
    with pytest.raises(ConfigError, match=r"key 'models.a.stop_token_ids': \[42\] are not special tokens .*128009 <\|eot_id\|>"):
        resolve_model("a", registry=registry(tmp_path, a={"path": str(model_dir), "stop_token_ids": [42]}))


def test_a_directory_without_an_entry_stops_at_its_familys_end_of_turn_token(tmp_path):
    """A trained or local checkpoint that no entry names (its folder is the dataset's name) still stops at
    <|eot_id|> (Llama-3) / <|im_end|> (Qwen), looked up in its own tokenizer; SmolLM2-like chats get none."""
    llama_dir = _llama_like(tmp_path / "tree_dpo_math", eot_id=7)
    assert resolve_model(str(llama_dir), registry=registry(tmp_path)).stop_token_ids == (7,)
    qwen = make_model(tmp_path / "run2")
    (qwen / "config.json").write_text(json.dumps({"max_position_embeddings": 4096, "model_type": "qwen2"}))
    (qwen / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": "{{ '<|im_start|>' + messages[0]['content'] + '<|im_end|>' }}",
        "added_tokens_decoder": {"151643": {"content": "<|endoftext|>"}, "151644": {"content": "<|im_start|>"},
                                 "151645": {"content": "<|im_end|>"}}}))
    assert resolve_model(str(qwen), registry=registry(tmp_path)).stop_token_ids == (151645,)
    assert resolve_model(str(make_model(tmp_path / "plain")), registry=registry(tmp_path)).stop_token_ids == ()


def test_the_shipped_registry_stops_llama3_and_qwen_at_their_end_of_turn_ids():
    """The ids are the published tokenizers' (tests/fixtures/chat_templates)."""
    from tests.harness.chat_template_fixtures import fixture

    models = load_registry().models
    assert models["Meta-Llama-3-8B-Instruct"].stop_token_ids == [
        fixture("Meta-Llama-3-8B-Instruct")["special_tokens"]["<|eot_id|>"]] == [128009]
    assert models["Qwen2.5-7B-Instruct"].stop_token_ids == [
        fixture("Qwen2.5-7B-Instruct")["special_tokens"]["<|im_end|>"]] == [151645]
