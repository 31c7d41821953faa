"""Training records render to exactly the tokens vLLM serves, for the published chat templates of
Meta-Llama-3-8B-Instruct, Qwen2.5-7B-Instruct and SmolLM2-135M-Instruct (each against the LLaMA-Factory template
its training config names), and the template check says which side to change when they differ.

The tokenizers are the published tokenizer_config.json / pre-tokenizers (tests/fixtures/chat_templates) on the
embedded SmolLM2's vocabulary (tests/harness/chat_template_fixtures.py)."""
from __future__ import annotations

import csv
import json
import subprocess

import pytest

from densepolicy.config import ConfigError
from densepolicy.paths import embedded_model_dir, serve_python
from densepolicy.postprocess.config import DatasetConfig
from densepolicy.postprocess.lf_dataset import (
    DatasetError,
    dataset_info_entry,
    prepare_dataset,
    register_dataset,
)
from densepolicy.postprocess.pairs import PAIR_COLUMNS
from densepolicy.serving.chat_template import (
    ContentRule,
    content_rules,
    default_system_prompt,
    served_messages,
)
from densepolicy.training.train import (
    TemplatePair,
    check_chat_template,
    sharegpt_messages,
)
from envs.sandbox import format_observation
from tests.harness.chat_template_fixtures import MODELS, fixture, fixture_tokenizer_dir

ENTRY = dataset_info_entry("x", has_system=False)


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """Published model name -> its fixture tokenizer directory."""
    root = tmp_path_factory.mktemp("chat_templates")
    return {name: fixture_tokenizer_dir(name, root / name, embedded_model_dir()) for name in MODELS}


def agent_prompt(a: int, b: int) -> list[dict[str, str]]:
    """A math agent's prompt after one code step: the observation is the sandbox's, ending in a newline."""
    return [{"role": "user", "content": f"Task: What is {a} * {b}?\nSolve it with Python.\n"},
            {"role": "assistant", "content": f"Thought: multiply.\nAction:\nprint({a} * {b})\nEnd Action"},
            {"role": "user", "content": format_observation(f"{a * b}\n")}]


def write_pairs(path, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=PAIR_COLUMNS)
        writer.writeheader()
        for i, (prompt, chosen, rejected) in enumerate(rows):
            writer.writerow({"task_id": str(i), "dataset": "math", "task_type": "", "prompt": json.dumps(prompt),
                             "chosen": chosen, "rejected": rejected, "chosen_node": "0", "rejected_node": "1",
                             "chosen_value": 1.0, "rejected_value": 0.0, "chosen_visits": 2, "rejected_visits": 2,
                             "depth": 2, "selected": True})


def pair_rows(n: int = 4) -> list[tuple[list, str, str]]:
    return [(agent_prompt(7 + i, 9), f"Thought: the product is {(7 + i) * 9}.\nAnswer: {(7 + i) * 9}\n",
             f"Answer: {(7 + i) * 9 + 1}") for i in range(n)]


def train_args(tokenizer_dir, data_dir, dataset: str, template: str, default_system=None) -> dict:
    return {"model_name_or_path": str(tokenizer_dir), "template": template, "default_system": default_system,
            "dataset": dataset, "dataset_dir": str(data_dir)}


def write_raw_dataset(data_dir, name: str, records: list[dict]) -> None:
    """Records as they are (no served-template rendering), registered like prepare_dataset's."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / f"{name}.json").write_text(json.dumps(records))
    register_dataset(data_dir / "dataset_info.json", name, dataset_info_entry(name, has_system=False))


def raw_record(prompt, chosen, rejected) -> dict:
    from densepolicy.postprocess.lf_dataset import pair_to_sharegpt

    return pair_to_sharegpt(prompt, chosen, rejected)


# ------------------------------------------------------------------------------ what the templates do


def test_the_published_templates_content_rules_and_default_systems(tokenizer_dirs):
    from transformers import AutoTokenizer

    tokenizers = {name: AutoTokenizer.from_pretrained(str(path)) for name, path in tokenizer_dirs.items()}
    assert content_rules(tokenizers["Meta-Llama-3-8B-Instruct"]) == {
        role: ContentRule(strip_leading=True, strip_trailing=True) for role in ("system", "user", "assistant")}
    for name in ("Qwen2.5-7B-Instruct", "SmolLM2-135M-Instruct"):
        assert not any(rule.changes_contents for rule in content_rules(tokenizers[name]).values())
    assert default_system_prompt(tokenizers["Meta-Llama-3-8B-Instruct"]) is None
    assert default_system_prompt(tokenizers["Qwen2.5-7B-Instruct"]) == \
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert default_system_prompt(tokenizers["SmolLM2-135M-Instruct"]) == fixture("SmolLM2-135M-Instruct")["default_system"]
    # the Llama-3 rule is Jinja's trim exactly: what the served template renders, for every role
    llama = tokenizers["Meta-Llama-3-8B-Instruct"]
    chat = agent_prompt(3, 4) + [{"role": "assistant", "content": " \nAnswer: 12\n\n"}]
    chat = [{"role": "system", "content": "\tBe exact.\n"}] + chat
    assert llama.apply_chat_template(chat, tokenize=False) == \
        llama.apply_chat_template(served_messages(chat, content_rules(llama)), tokenize=False)


def test_llama3_served_prompt_differs_from_llamafactory_on_raw_math_observations(tokenizer_dirs):
    """The bug: a math observation ends in a newline; Llama-3's template serves `42<|eot_id|>`, LLaMA-Factory's
    llama3 trains on `42\\n<|eot_id|>`."""
    pair = TemplatePair(tokenizer_dirs["Meta-Llama-3-8B-Instruct"], "llama3")
    messages = agent_prompt(6, 7) + [{"role": "assistant", "content": "Answer: 42"}]
    assert messages[2]["content"] == "42\n"
    turn = pair.compare_turns(messages)[1]
    assert not turn.agree
    assert "42\n<|eot_id|>" in pair.tokenizer.decode(turn.training_prompt_ids)
    assert "42<|eot_id|>" in pair.tokenizer.decode(turn.serving_prompt_ids)


# ------------------------------------------------------------------------------ the data side makes them agree


@pytest.mark.parametrize("name", MODELS)
def test_prepared_records_render_to_the_served_tokens(tokenizer_dirs, tmp_path, name):
    """pairs CSV -> prepare_dataset with the model's tokenizer -> every turn LLaMA-Factory trains on (the
    prompt's code step and the chosen answer) is preceded by exactly the served prompt's tokens, and the check
    of train.py accepts the dataset."""
    from transformers import AutoTokenizer

    meta = fixture(name)
    write_pairs(tmp_path / "p.pairs.csv", pair_rows())
    data = tmp_path / "data"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs[name]))
    report = prepare_dataset(tmp_path / "p.pairs.csv", DatasetConfig(cutoff_len=2048, output_dir=str(data)),
                             name="tree", tokenizer=tokenizer, show_progress=False)
    assert report.written_pairs == 4
    records = json.loads((data / "tree.json").read_text())
    pair = TemplatePair(tokenizer_dirs[name], meta["llamafactory_template"], meta["default_system"])
    for record in records:
        messages, system = sharegpt_messages(record, ENTRY)
        assert all(turn.agree for turn in pair.compare_turns(messages, system))
        rejected = messages[:-1] + [{"role": "assistant", "content": record["rejected"]["value"]}]
        assert pair.compare(rejected, system).agree
    check_chat_template(train_args(tokenizer_dirs[name], data, "tree", meta["llamafactory_template"],
                                   meta["default_system"]), records=10, pair=pair)
    trims = name == "Meta-Llama-3-8B-Instruct"
    assert (records[0]["conversations"][2]["value"] == "63") is trims      # the observation "63\n"
    assert (records[0]["chosen"]["value"] == "Thought: the product is 63.\nAnswer: 63") is trims
    assert ("trims" in report.text() or "strips" in report.text()) is trims


@pytest.mark.integration
def test_prepared_records_match_the_serving_venvs_rendering(tokenizer_dirs, tmp_path):
    """The prompt ids LLaMA-Factory trains on are the ids the serving venv's transformers (what vLLM calls to
    render a chat request) produces for the agent's request, for all three templates."""
    from transformers import AutoTokenizer

    script = ("import json, sys\nfrom transformers import AutoTokenizer\n"
              "jobs = json.loads(sys.argv[1])\nout = []\n"
              "for path, chat in jobs:\n"
              "    tok = AutoTokenizer.from_pretrained(path)\n"
              "    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)\n"
              "    out.append(tok.encode(text, add_special_tokens=False))\n"
              "print(json.dumps(out))\n")
    jobs, expected = [], []
    for name in MODELS:
        meta = fixture(name)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs[name]))
        write_pairs(tmp_path / f"{name}.pairs.csv", pair_rows(1))
        prepare_dataset(tmp_path / f"{name}.pairs.csv", DatasetConfig(cutoff_len=2048, output_dir=str(tmp_path / name)),
                        name="tree", tokenizer=tokenizer, show_progress=False)
        record = json.loads((tmp_path / name / "tree.json").read_text())[0]
        messages, _ = sharegpt_messages(record, ENTRY)
        pair = TemplatePair(tokenizer_dirs[name], meta["llamafactory_template"], meta["default_system"])
        expected.append(pair.compare(messages).training_prompt_ids)
        jobs.append([str(tokenizer_dirs[name]), pair_rows(1)[0][0]])  # the request the agent sent: raw contents
    out = subprocess.run([str(serve_python()), "-c", script, json.dumps(jobs)], capture_output=True, text=True,
                         check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_pairs_whose_answers_become_the_same_are_dropped_and_counted(tokenizer_dirs, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs["Meta-Llama-3-8B-Instruct"]))
    write_pairs(tmp_path / "p.pairs.csv", [(agent_prompt(2, 3), "Answer: 6\n", "Answer: 6"),
                                           (agent_prompt(2, 3), "Answer: 6", "Answer: 5")])
    report = prepare_dataset(tmp_path / "p.pairs.csv", DatasetConfig(output_dir=str(tmp_path / "d")), name="t",
                             tokenizer=tokenizer, show_progress=False)
    assert report.same_answers == 1 and report.written_pairs == 1
    assert "dropped 1 pair(s) whose answers are then the same" in report.text()
    write_pairs(tmp_path / "q.pairs.csv", [(agent_prompt(2, 3), "Answer: 6\n", "Answer: 6")])
    with pytest.raises(DatasetError, match="the two answers of all 1 selected pairs are the same"):
        prepare_dataset(tmp_path / "q.pairs.csv", DatasetConfig(output_dir=str(tmp_path / "d")), name="u",
                        tokenizer=tokenizer, show_progress=False)


# ------------------------------------------------------------------------------ the check names the side to change


def test_untrimmed_llama3_records_are_refused_naming_the_data_side(tokenizer_dirs, tmp_path):
    """A dataset written without the served model's tokenizer (contents as sampled) is refused before training;
    the message says to re-write the data for the model, not to change the config."""
    data = tmp_path / "data"
    write_raw_dataset(data, "raw", [raw_record(agent_prompt(6, 7), "Answer: 42", "Answer: 41")])
    args = train_args(tokenizer_dirs["Meta-Llama-3-8B-Instruct"], data, "raw", "llama3")
    with pytest.raises(ConfigError) as error:
        check_chat_template(args)
    message = str(error.value)
    assert "chat template mismatch" in message and "Change the data, not the config" in message
    assert "strips leading and trailing whitespace of system, user and assistant contents" in message
    assert f"prepare_dataset.py --model {tokenizer_dirs['Meta-Llama-3-8B-Instruct']}" in message
    # where the ids first differ: the task's trailing newline, kept for training, trimmed when served
    assert ".\\n<|eot_id|>" in message and ".<|eot_id|>" in message


def test_a_later_record_with_whitespace_the_server_strips_is_refused(tokenizer_dirs, tmp_path):
    """The token-level check reads the first records only; a record further on whose contents the served
    template would change (a trailing newline) is found by the string check over every record."""
    clean = [raw_record([{"role": "user", "content": f"Task {i}"}], f"Answer: {i}", f"Answer: {i + 1}") for i in range(3)]
    later = raw_record([{"role": "user", "content": "Task 9"}], "Answer: 9\n", "Answer: 8")
    data = tmp_path / "data"
    write_raw_dataset(data, "mixed", clean + [later])
    args = train_args(tokenizer_dirs["Meta-Llama-3-8B-Instruct"], data, "mixed", "llama3")
    with pytest.raises(ConfigError, match=r"record 3: a content with whitespace the served template strips"):
        check_chat_template(args, records=3)
    write_raw_dataset(data, "clean", clean)
    check_chat_template(train_args(tokenizer_dirs["Meta-Llama-3-8B-Instruct"], data, "clean", "llama3"))


def test_a_default_system_mismatch_names_the_config_key_and_the_models_prompt(tokenizer_dirs, tmp_path):
    data = tmp_path / "data"
    write_raw_dataset(data, "raw", [raw_record(agent_prompt(6, 7), "Answer: 42", "Answer: 41")])
    args = train_args(tokenizer_dirs["SmolLM2-135M-Instruct"], data, "raw", "smollm2")  # stock: "...Hugging Face."
    with pytest.raises(ConfigError) as error:
        check_chat_template(args)
    message = str(error.value)
    assert "Change the config" in message and "Change the data" not in message
    assert "default_system='You are a helpful AI assistant named SmolLM, trained by Hugging Face'" in message


def test_a_wrong_template_names_the_template_key(tokenizer_dirs, tmp_path):
    data = tmp_path / "data"
    write_raw_dataset(data, "raw", [raw_record([{"role": "user", "content": "Task"}], "Answer: 1", "Answer: 2")])
    args = train_args(tokenizer_dirs["Meta-Llama-3-8B-Instruct"], data, "raw", "qwen")
    with pytest.raises(ConfigError, match=r"set `template` to the one of the model's family \(llama3 for Llama-3"):
        check_chat_template(args)


def test_expert_sft_data_is_written_as_the_served_template_renders_it(tokenizer_dirs, tmp_path, monkeypatch):
    """The warm start's multi-turn SFT records get the same treatment: for Llama-3 every content trimmed, so
    each trained assistant turn follows exactly the prompt vLLM serves at that step."""
    from transformers import AutoTokenizer

    from densepolicy.training import expert_data

    llama = tokenizer_dirs["Meta-Llama-3-8B-Instruct"]
    chat = agent_prompt(6, 7) + [{"role": "assistant", "content": "Answer: 42\n"}]
    monkeypatch.setattr(expert_data, "load_tokenizer", lambda model: AutoTokenizer.from_pretrained(str(llama)))
    monkeypatch.setattr(expert_data, "collect_env", lambda cfg, env_name, wanted, tokenizer, summary, log: [
        {"conversations": expert_data.to_sharegpt(chat), "env": env_name, "task_id": "0", "source": "test",
         "tokens": 1}][:wanted])
    cfg = expert_data.load_expert_data_config(["gsm8k=1", "babyai=0", "alfworld=0", "math=0"])
    expert_data.build_expert_dataset(cfg, dataset_dir=tmp_path)
    records = json.loads((tmp_path / f"{cfg.name}.json").read_text())
    assert [turn["value"] for turn in records[0]["conversations"]] == [m["content"].strip() for m in chat]
    args = train_args(llama, tmp_path, cfg.name, "llama3")
    check_chat_template(args)
