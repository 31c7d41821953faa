"""The reproducible-sampling setting (`serving.deterministic`): what each device's server is started with,
and that the launcher's servers get it from `serving.deterministic=true`. How often trees diverge with
and without it is measured in benchmarks/bench_reproducibility.py."""
from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from densepolicy.launcher.servers import load_serving_config as launcher_serving_config
from densepolicy.launcher.servers import server_process
from densepolicy.serving.models import resolve_model
from densepolicy.serving.server import VLLMServer, load_serving_config

MODEL = "SmolLM2-135M-Instruct"


def _flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_default_keeps_batching_and_prefix_caching(tmp_path):
    server = VLLMServer(MODEL, load_serving_config(None, ["port=8123"]), tmp_path / "log")
    argv, env = server.command(), server.environment()
    assert "--enable-prefix-caching" in argv and "--max-num-seqs" not in argv
    assert "VLLM_BATCH_INVARIANT" not in env


def test_deterministic_on_cpu_runs_one_sequence_without_prefix_caching(tmp_path):
    cfg = load_serving_config(None, ["port=8123", "deterministic=true", "max_num_seqs=64"])
    argv = VLLMServer(MODEL, cfg, tmp_path / "log").command()
    assert "--no-enable-prefix-caching" in argv and "--enable-prefix-caching" not in argv
    assert _flag_value(argv, "--max-num-seqs") == "1"  # wins over max_num_seqs: batch size changes numerics
    assert _flag_value(argv, "--seed") == "0"
    # vLLM-CPU has no batch-invariant kernels: the variable would do nothing
    assert "VLLM_BATCH_INVARIANT" not in VLLMServer(MODEL, cfg, tmp_path / "log").environment()


def test_deterministic_on_gpu_uses_batch_invariant_kernels_and_keeps_batching(tmp_path):
    cfg = load_serving_config(None, ["port=8123", "deterministic=true", "device=gpu"])
    server = VLLMServer(MODEL, cfg, tmp_path / "log")
    assert server.environment()["VLLM_BATCH_INVARIANT"] == "1"
    assert "--enable-prefix-caching" in server.command() and "--max-num-seqs" not in server.command()
    assert "VLLM_BATCH_INVARIANT=1" in server.shell_command()  # what tmux / sbatch run


def test_launcher_servers_get_the_setting_from_serving_overrides(tmp_path):
    for device, check in (("cpu", lambda p: _flag_value(p.argv, "--max-num-seqs") == "1"),
                          ("gpu", lambda p: p.env.get("VLLM_BATCH_INVARIANT") == "1")):
        cfg = launcher_serving_config(device, ["deterministic=true"])
        proc = server_process(MODEL, cfg, tmp_path / "server.log", 8200, gpus=["0"] if device == "gpu" else [])
        assert check(proc), (device, proc)
        plain = server_process(MODEL, launcher_serving_config(device, []), tmp_path / "server.log", 8200, gpus=[])
        assert "VLLM_BATCH_INVARIANT" not in plain.env and "--max-num-seqs" not in plain.argv


# ------------------------------------------------------------------------------ real vLLM-CPU

QUESTIONS = ["What is 17 * 23?", "Name three prime numbers.", "Write a haiku about rain.", "What is 2 + 2?",
             "Explain recursion in one sentence.", "List four colors.", "What is the capital of Peru?",
             "Count from 1 to 9."]


def _complete(base_url: str, served_name: str, question: str, seed: int) -> tuple[str, list[float]]:
    body = {"model": served_name, "messages": [{"role": "user", "content": question}], "temperature": 1.0,
            "max_tokens": 24, "seed": seed, "logprobs": True}
    request = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        choice = json.loads(response.read())["choices"][0]
    return choice["message"]["content"], [t["logprob"] for t in choice["logprobs"]["content"]]


@pytest.mark.integration
def test_deterministic_cpu_server_answers_alike_alone_and_in_a_crowd(vllm_lock, tiny_llama, tmp_path):
    """The guarantee of deterministic=true on vLLM-CPU: a seeded request gets the same tokens and the
    same logprobs whether it runs alone or among other requests (bitwise). A property of the server's settings,
    not of the weights: served with the session's tiny Llama (SmolLM2's tokenizer), which starts and decodes faster."""
    cfg = load_serving_config(None, ["port=0", "kv_cache_gb=1", "max_model_len=2048", "deterministic=true"])
    with VLLMServer(resolve_model(str(tiny_llama), cfg.max_model_len), cfg, tmp_path / "vllm.log") as server:
        alone = _complete(server.base_url, server.served_name, QUESTIONS[0], seed=7)
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            crowd = list(pool.map(lambda q: _complete(server.base_url, server.served_name, q, seed=7),
                                  QUESTIONS[1:] + QUESTIONS[:1]))
    assert crowd[-1] == alone
