"""`make gpu-check` (scripts/gpu_check.py): its no-GPU exit, and its training half as a CPU dry run where
the serving venv is missing (what a box with only LLaMA-Factory looks like to it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from densepolicy.gpu_check import (EXIT_NO_GPU, EXIT_USAGE, SERVED_HEADS, TRAIN_TEMPLATE, Failed, GpuCheck,
                                   check_default_gpu_mode, write_datasets)
from densepolicy.paths import PROJECT_ROOT, embedded_model_dir


def run_check(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/gpu_check.py", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_without_a_gpu_it_says_so_and_exits_with_its_own_code(tmp_path):
    proc = run_check("--work-dir", str(tmp_path / "w"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == EXIT_NO_GPU, proc.stdout + proc.stderr
    assert "no GPU found" in proc.stdout and "--cpu" in proc.stdout
    assert not (tmp_path / "w" / "gpu_check.json").exists()  # nothing was checked


def test_unknown_check_is_a_usage_error():
    proc = run_check("--only", "dpo_zero3,nccl")
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.strip().startswith("error: unknown check 'nccl'; checks: gpu, dpo_zero3")


def test_datasets_are_registered_pairwise_and_multi_turn(tmp_path):
    info = json.loads((write_datasets(tmp_path, pairs=5, conversations=3) / "dataset_info.json").read_text())
    pairs = json.loads((tmp_path / info["gpu_check_pairs"]["file_name"]).read_text())
    sft = json.loads((tmp_path / info["gpu_check_sft"]["file_name"]).read_text())
    assert info["gpu_check_pairs"]["ranking"] is True and "ranking" not in info["gpu_check_sft"]
    assert len(pairs) == 5 and pairs[0]["chosen"]["value"] != pairs[0]["rejected"]["value"]
    assert len(sft) == 3 and [m["from"] for m in sft[0]["conversations"]] == ["human", "gpt", "human", "gpt"]


@pytest.mark.integration
def test_cpu_dry_run_trains_with_the_gpu_configs_and_skips_vllm_without_a_serving_venv(tmp_path):
    """The ZeRO-3 config (DeepSpeed off on CPU, whole-run warm-up checked) trains through TreeDPO's code on
    a tiny random model; with no serving venv the vLLM check is a SKIP with its reason, not a FAIL."""
    work = tmp_path / "w"
    proc = run_check("--cpu", "--steps", "2", "--only", "dpo_zero3,vllm_server,tree", "--work-dir", str(work),
                     env={"DENSEPOLICY_SERVE_PYTHON": str(tmp_path / "no-serve-venv" / "bin" / "python")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((work / "gpu_check.json").read_text())
    status = {c["name"]: (c["status"], c["detail"]) for c in report["checks"]}
    assert status["gpu"][0] == "SKIP"
    assert status["dpo_zero3"][0] == "PASS" and "lr rising 0 ->" in status["dpo_zero3"][1]
    assert status["vllm_server"][0] == "SKIP" and "no vLLM in the serving venv" in status["vllm_server"][1]
    assert status["tree"][0] == "SKIP"
    assert "1 PASS, 0 FAIL, 3 SKIP" in proc.stdout  # the one-screen report
    assert (work / "dpo_zero3" / "model.safetensors").is_file()


def _served_stand_in(path, heads=SERVED_HEADS, max_pos=8192):
    """config.json of a model like the check's served one (its heads decide the tensor-parallel size)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"num_attention_heads": heads, "num_key_value_heads": heads // 2,
                                                  "max_position_embeddings": max_pos, "torch_dtype": "bfloat16"}))
    return path


@pytest.mark.parametrize("visible, expected_tp", [("0", 1), ("0,1", 2), ("0,1,2,3,4,5,6,7", 8)])
def test_vllm_check_serves_in_the_default_gpu_mode_over_every_visible_gpu(tmp_path, monkeypatch, visible,
                                                                         expected_tp):
    """The old check served with --enforce-eager and a 2,048-token context on one GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    server = GpuCheck(tmp_path / "w").server_for(_served_stand_in(tmp_path / "served"))
    argv = server.command()
    assert "--enforce-eager" not in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == str(expected_tp)
    assert argv[argv.index("--max-model-len") + 1] == "8192"  # the model's own context
    assert not any(k.startswith("VLLM_CPU") for k in server.environment())
    line = check_default_gpu_mode(server, len(visible.split(",")))
    assert f"tensor parallel {expected_tp} of {len(visible.split(','))}" in line and "CUDA graphs" in line


def test_vllm_check_fails_on_an_eager_or_single_gpu_server(tmp_path, monkeypatch):
    from densepolicy.serving.server import VLLMServer, load_serving_config

    model = _served_stand_in(tmp_path / "served")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    eager = VLLMServer(str(model), load_serving_config(None, ["device=gpu", "enforce_eager=true"]), None, port=1)
    with pytest.raises(Failed, match="eager"):
        check_default_gpu_mode(eager, 2)
    one = VLLMServer(str(model), load_serving_config(None, ["device=gpu", "tensor_parallel_size=1"]), None, port=1)
    with pytest.raises(Failed, match="tensor parallel 1"):
        check_default_gpu_mode(one, 2)


def test_tiny_models_speak_llama3_and_train_with_the_llama3_template(tmp_path):
    if not (embedded_model_dir() / "tokenizer.json").is_file():
        pytest.skip("needs the embedded model's tokenizer (make setup)")
    from transformers import AutoTokenizer

    from densepolicy.testing.tiny_model import LLAMA3_CHAT_TEMPLATE, build_tiny_model

    path = build_tiny_model(tmp_path / "l3", hidden_size=SERVED_HEADS * 8, heads=SERVED_HEADS, kv_heads=4,
                            chat_style="llama3")
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok.chat_template == LLAMA3_CHAT_TEMPLATE and tok.eos_token == "<|eot_id|>"
    text = tok.apply_chat_template([{"role": "user", "content": " 42\n"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n42<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    config = json.loads((path / "config.json").read_text())
    assert config["eos_token_id"] == tok.convert_tokens_to_ids("<|eot_id|>") and config["vocab_size"] >= len(tok)
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == config["eos_token_id"]
    assert TRAIN_TEMPLATE == "llama3"


def test_the_tiny_llama3_model_keeps_turn_boundaries_as_llama3_does(tmp_path):
    """Llama-3's pre-tokenizer keeps "\\n\\n" whole, so the conversation vLLM encodes in one piece and the messages
    LLaMA-Factory encodes one by one give the same ids; the tiny model must too, or every check that compares
    the two fails for a reason no real model has (the GPT-2 split of its SmolLM2 vocabulary cuts "\\n|\\nThought")."""
    from transformers import AutoTokenizer

    from densepolicy.testing.tiny_model import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(str(build_tiny_model(tmp_path / "tiny", chat_style="llama3")))
    header, content = "<|start_header_id|>assistant<|end_header_id|>\n\n", "Thought: multiply.\n\n  Action:\nx = 1\n"
    whole = tokenizer.encode(header + content, add_special_tokens=False)
    assert whole == tokenizer.encode(header, add_special_tokens=False) + tokenizer.encode(content,
                                                                                           add_special_tokens=False)
    assert tokenizer.decode(whole) == header + content
