"""`prepare_dataset.py`: pairs CSV -> LLaMA-Factory ShareGPT pairwise dataset (docs/original.md §7, docs/formats.md)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from densepolicy.postprocess.lf_dataset import (DatasetError, pair_to_sharegpt, read_pairwise_json, record_messages,
                                    register_dataset)
from densepolicy.postprocess.pairs import PAIR_COLUMNS
from densepolicy.paths import embedded_model_dir

ROOT = Path(__file__).resolve().parents[3]
MULTI_TURN = [{"role": "user", "content": "Goal: 2+2?"}, {"role": "assistant", "content": "Action:\nprint(2+2)\nEnd Action"},
              {"role": "user", "content": "Observation:\n4"}]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def write_pairs(path: Path, pairs: list[tuple[list, str, str, bool]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PAIR_COLUMNS)
        writer.writeheader()
        for i, (prompt, chosen, rejected, selected) in enumerate(pairs):
            writer.writerow({"task_id": str(i), "dataset": "math", "prompt": json.dumps(prompt), "chosen": chosen,
                             "rejected": rejected, "chosen_node": "0", "rejected_node": "1", "chosen_value": 1,
                             "rejected_value": 0, "chosen_visits": 1, "rejected_visits": 1, "depth": 1,
                             "selected": selected})
    return path


def run_prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "prepare_dataset.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_sharegpt_round_trip_and_bad_prompts():
    record = pair_to_sharegpt(MULTI_TURN, "Answer: 4", "Answer: 5")
    assert record["conversations"] == [{"from": "human", "value": "Goal: 2+2?"},
                                       {"from": "gpt", "value": "Action:\nprint(2+2)\nEnd Action"},
                                       {"from": "human", "value": "Observation:\n4"}]
    assert record["chosen"] == {"from": "gpt", "value": "Answer: 4"}
    assert record_messages(record) == MULTI_TURN
    with_system = pair_to_sharegpt([{"role": "system", "content": "S"}] + MULTI_TURN, "a", "b")
    assert with_system["system"] == "S" and record_messages(with_system)[0] == {"role": "system", "content": "S"}
    with pytest.raises(DatasetError, match="end with a user message"):
        pair_to_sharegpt(MULTI_TURN[:2], "a", "b")
    with pytest.raises(DatasetError, match="message 1 has role 'user'"):
        pair_to_sharegpt([MULTI_TURN[0], MULTI_TURN[0]], "a", "b")


def test_register_keeps_other_entries(tmp_path):
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"eurus_dpo": {"file_name": "eurus_dpo.json", "ranking": True}}))
    register_dataset(info, "tree", {"file_name": "tree.json"})
    register_dataset(info, "tree", {"file_name": "tree2.json"})
    assert json.loads(info.read_text()) == {"eurus_dpo": {"file_name": "eurus_dpo.json", "ranking": True},
                                            "tree": {"file_name": "tree2.json"}}
    info.write_text("{broken")
    with pytest.raises(DatasetError, match="not valid JSON"):
        register_dataset(info, "x", {})


def test_cli_length_filter_with_the_model_tokenizer_and_mixing(tmp_path):
    long_step = "Thought: " + "very long reasoning " * 200          # ~800 tokens
    pairs = write_pairs(tmp_path / "merged_all_pairs.math-3-3.csv", [
        (MULTI_TURN, "Answer: 4", "Answer: 5", True),
        ([MULTI_TURN[0]], "Action:\nprint(4)\nEnd Action", "Answer: 22", True),
        ([MULTI_TURN[0]], "Answer: 4", long_step, True),            # too long on the rejected side
        ([MULTI_TURN[0]], "Answer: 4", "Answer: 3", False),         # not selected
    ])
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))
    (data / "other.json").write_text(json.dumps([  # alpaca pairwise, converted on the fly
        {"instruction": "q", "input": "", "history": [["u0", "a0"]], "chosen": "good", "rejected": "bad"}]))
    out = run_prepare("--pairs", str(pairs), "--output_dir", str(data), "--cutoff_len", "256", "--mix", "other:2")
    assert out.returncode == 0, out.stderr
    assert "dropped 1 pair(s) longer than the cutoff" in out.stdout and "1 not selected" in out.stdout
    records = json.loads((data / "tree_dpo_math-3-3.json").read_text())
    assert len(records) == 2 + 4                                     # 2 kept pairs + round(2 * 2) mixed
    ours = [r for r in records if r["chosen"]["value"] != "good"]
    assert sorted(r["rejected"]["value"] for r in ours) == ["Answer: 22", "Answer: 5"]
    mixed = [r for r in records if r["chosen"]["value"] == "good"][0]
    assert mixed["conversations"] == [{"from": "human", "value": "u0"}, {"from": "gpt", "value": "a0"},
                                      {"from": "human", "value": "q"}]
    info = json.loads((data / "dataset_info.json").read_text())
    assert info["other"] == {"file_name": "other.json"}
    assert info["tree_dpo_math-3-3"] == {"file_name": "tree_dpo_math-3-3.json", "formatting": "sharegpt",
                                         "ranking": True, "columns": {"messages": "conversations",
                                                                      "chosen": "chosen", "rejected": "rejected"}}
    again = run_prepare("--pairs", str(pairs), "--output_dir", str(data))
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = run_prepare("--pairs", str(pairs), "--output_dir", str(data), "--name", "n2", "--model", "no-such-model")
    assert missing.returncode == 2 and "'no-such-model' is neither a registered name" in missing.stderr


@pytest.mark.integration
def test_llamafactory_loads_the_dataset_with_expected_token_ids(tmp_path):
    """Real LLaMA-Factory (template smollm2 + the model's own system prompt) tokenises a hand-checked pair."""
    pairs = write_pairs(tmp_path / "p.pairs.csv", [([{"role": "user", "content": "hi"}], "yo", "no", True),
                                                   (MULTI_TURN, "Answer: 4", "Answer: 5", True)])
    data = tmp_path / "data"
    out = run_prepare("--pairs", str(pairs), "--output_dir", str(data), "--name", "hand")
    assert out.returncode == 0, out.stderr
    script = f"""
import json
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
from llamafactory.data import get_template_and_fix_tokenizer, get_dataset
args = dict(model_name_or_path={str(embedded_model_dir())!r}, stage="dpo", do_train=True, finetuning_type="full",
            dataset="hand", dataset_dir={str(data)!r}, template="smollm2", cutoff_len=512,
            default_system={SYSTEM!r}, output_dir={str(tmp_path / 'out')!r}, overwrite_cache=True, report_to="none")
model_args, data_args, training_args, _, _ = get_train_args(args)
module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
ds = get_dataset(template, model_args, data_args, training_args, stage="rm", **module)["train_dataset"]
keys = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
print("RESULT" + json.dumps([{{k: ex[k] for k in keys}} for ex in ds]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    examples = json.loads(result.stdout.split("RESULT", 1)[1])
    assert len(examples) == 2
    # hand-checked ChatML ids of the embedded tokenizer: <|im_start|>=1, <|im_end|>=2, "\n"=198,
    # "user"=4093, "assistant"=520 9531, "hi"=6004, "yo"=31041, "no"=4607
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    system_ids = tok(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n", add_special_tokens=False)["input_ids"]
    prompt_ids = system_ids + [1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]
    hand = examples[0]
    assert hand["chosen_input_ids"] == prompt_ids + [31041, 2, 198]
    assert hand["rejected_input_ids"] == prompt_ids + [4607, 2, 198]
    assert [t for t in hand["chosen_labels"] if t != -100] == [31041, 2, 198]
    assert [t for t in hand["rejected_labels"] if t != -100] == [4607, 2, 198]
    # the multi-turn pair equals the model's own chat template rendering (what vLLM serves)
    own = tok.apply_chat_template(MULTI_TURN + [{"role": "assistant", "content": "Answer: 4"}], tokenize=False)
    assert examples[1]["chosen_input_ids"] == tok(own, add_special_tokens=False)["input_ids"]
    assert read_pairwise_json(data / "hand.json")[0]["chosen"]["value"] == "yo"
