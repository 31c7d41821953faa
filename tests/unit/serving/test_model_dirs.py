"""Models registered by directory: Hugging Face cache snapshots are named after their repository (not the hash)
and get the registry entry of that name; the LLaMA-Factory template comes from the entry or the model's own
chat template (so `template: auto` in the GPU configs needs no template=qwen by hand)."""
from __future__ import annotations

import json

import pytest

from densepolicy.config import ConfigError
from densepolicy.paths import PROJECT_ROOT
from densepolicy.serving.models import (detect_template, load_registry, model_dir_name, model_template,
                                        resolve_model)
from densepolicy.training.train import SAVES_DIR, build_train_args
from tests.harness.treedpo_helpers import write_dataset

# Openings of the published chat templates (tokenizer_config.json of each model on the Hugging Face hub).
QWEN25_TEMPLATE = ("{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n{%- else %}\n    {%- if messages[0]['role'] "
                   "== 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
                   "\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You "
                   "are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}")
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
                   "<|end_header_id|>\\n\\n' }}{% endif %}")
SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                    "'<|im_end|>' + '\\n'}}{% endfor %}")


def model(path, model_type, template, in_tokenizer_config=False, max_pos=32768):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "max_position_embeddings": max_pos,
                                                  "architectures": [f"{model_type.title()}ForCausalLM"]}))
    if in_tokenizer_config:
        (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    elif template is not None:
        (path / "chat_template.jinja").write_text(template)
    return path


def hf_snapshot(root, repo, **kw):
    org, name = repo.split("/")
    return model(root / "hub" / f"models--{org}--{name}" / "snapshots" / "0123456789abcdef0123", **kw)


def test_hf_cache_snapshot_is_named_after_its_repository_and_gets_its_entry(tmp_path):
    snap = hf_snapshot(tmp_path, "Qwen/Qwen2.5-7B-Instruct", model_type="qwen2", template=QWEN25_TEMPLATE,
                       in_tokenizer_config=True)
    assert model_dir_name(snap) == "Qwen2.5-7B-Instruct"
    spec = resolve_model(str(snap))  # the project's configs/models.yaml
    assert (spec.name, spec.served_name) == ("Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct")  # not the hash
    assert spec.path == snap.resolve() and spec.context_length == 8192 and spec.dtype == "bfloat16"
    assert spec.template == "qwen"


def test_an_unregistered_snapshot_or_folder_keeps_its_name_and_a_detected_template(tmp_path):
    snap = hf_snapshot(tmp_path, "someone/Llama-3.1-8B-Instruct-ft", model_type="llama", template=LLAMA3_TEMPLATE)
    spec = resolve_model(str(snap))
    assert spec.name == "Llama-3.1-8B-Instruct-ft" and spec.template == "llama3"
    assert spec.context_length == 32768  # no entry: the model's own limit, as before
    folder = model(tmp_path / "QWEN2.5-7B-INSTRUCT", model_type="qwen2", template=QWEN25_TEMPLATE)
    assert resolve_model(str(folder)).name == "Qwen2.5-7B-Instruct"  # a registered name, case aside


@pytest.mark.parametrize("model_type, template, in_tokenizer_config, expected", [
    ("llama", LLAMA3_TEMPLATE, False, "llama3"),
    ("qwen2", QWEN25_TEMPLATE, True, "qwen"),
    ("qwen3", QWEN25_TEMPLATE.replace("Qwen, created by Alibaba Cloud", "an assistant"), False, "qwen3"),
    ("llama", SMOLLM2_TEMPLATE, False, "smollm2"),
    ("mistral", "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}", False, None),
    ("llama", None, False, None),
])
def test_template_is_detected_from_the_models_own_chat_template(tmp_path, model_type, template,
                                                                in_tokenizer_config, expected):
    path = model(tmp_path / "m", model_type=model_type, template=template, in_tokenizer_config=in_tokenizer_config)
    assert detect_template(path) == expected


def test_embedded_model_and_project_registry():
    reg = load_registry()
    assert reg.models["Meta-Llama-3-8B-Instruct"].template == "llama3"
    qwen = reg.models["Qwen2.5-7B-Instruct"]
    assert (qwen.template, qwen.max_model_len, qwen.dtype) == ("qwen", 8192, "bfloat16")
    embedded = PROJECT_ROOT / reg.models["SmolLM2-135M-Instruct"].path
    if (embedded / "config.json").is_file():  # built by make setup
        assert model_template(embedded) == "smollm2" and detect_template(embedded) == "smollm2"


KEYS = {"model_name_or_path", "stage", "do_train", "finetuning_type", "pref_beta", "pref_loss", "pref_ftx",
        "dataset", "dataset_dir", "template", "cutoff_len", "overwrite_cache", "preprocessing_num_workers",
        "logging_steps", "save_steps", "save_total_limit", "plot_loss", "report_to", "per_device_train_batch_size",
        "gradient_accumulation_steps", "learning_rate", "num_train_epochs", "lr_scheduler_type", "warmup_ratio",
        "bf16", "seed", "val_size", "per_device_eval_batch_size", "eval_strategy", "eval_steps", "deepspeed",
        "output_dir", "ddp_timeout", "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "default_system"}


@pytest.mark.parametrize("config", ["gpu_full_zero3", "gpu_lora"])
def test_gpu_configs_train_a_cached_qwen_with_its_template_and_name(tmp_path, config):
    """The old gpu configs said template: llama3, so a Qwen checkpoint needed template=qwen by hand, and its
    output went to TreeDPO/saves/<snapshot hash>/..."""
    snap = hf_snapshot(tmp_path, "Qwen/Qwen2.5-7B-Instruct", model_type="qwen2", template=QWEN25_TEMPLATE,
                       in_tokenizer_config=True)
    write_dataset(tmp_path / "data", "tiny_tree_dpo")
    args = build_train_args(config, dataset="tiny_tree_dpo", model=snap, dataset_dir=tmp_path / "data",
                            known_keys=KEYS)
    assert args["template"] == "qwen"
    assert args["output_dir"].startswith(str(SAVES_DIR / "Qwen2.5-7B-Instruct"))
    explicit = build_train_args(config, dataset="tiny_tree_dpo", model=snap, dataset_dir=tmp_path / "data",
                                overrides=["template=chatml"], known_keys=KEYS)
    assert explicit["template"] == "chatml"  # the command line wins


def test_template_auto_without_a_recognised_template_names_the_key(tmp_path):
    unknown = model(tmp_path / "mystery", model_type="mistral", template="[INST] {{ messages }} [/INST]")
    write_dataset(tmp_path / "data", "tiny_tree_dpo")
    with pytest.raises(ConfigError, match="key 'template' is auto.*set template=NAME"):
        build_train_args("gpu_full_zero3", dataset="tiny_tree_dpo", model=unknown, dataset_dir=tmp_path / "data",
                         known_keys=KEYS)


def test_serving_and_training_find_a_model_in_the_same_search_order(tmp_path, monkeypatch):
    """One search order (`model_dir_candidates`): a registered name first, then the path, then models/<name>.
    Before, training tried the path first and serving never looked under models/, so a bare directory name
    under models/ trained but did not serve, and a name that is both registered and a directory could train
    one model and serve another."""
    from densepolicy.serving import models as serving_models
    from densepolicy.training.train import model_directory

    registered = model(tmp_path / "weights" / "registered", "llama", LLAMA3_TEMPLATE)
    shadow = model(tmp_path / "models" / "mymodel", "llama", LLAMA3_TEMPLATE)     # same bare name, not registered
    under_models = model(tmp_path / "models" / "only-here", "llama", LLAMA3_TEMPLATE)
    registry = tmp_path / "models.yaml"
    registry.write_text(f"default: mymodel\nmodels:\n  mymodel:\n    path: {registered}\n    max_model_len: 4096\n")
    monkeypatch.setattr(serving_models, "DEFAULT_REGISTRY", registry)
    monkeypatch.setattr(serving_models, "models_dir", lambda: tmp_path / "models")

    assert model_directory("mymodel") == registered and resolve_model("mymodel").path == registered.resolve()
    assert shadow.is_dir()  # present, and neither side picks it over the registry entry
    assert model_directory("only-here") == under_models
    assert resolve_model("only-here").path == under_models.resolve()
    with pytest.raises(ConfigError, match="no-such"):
        model_directory("no-such")
