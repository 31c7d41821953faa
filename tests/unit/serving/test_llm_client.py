"""LLMClient against the scripted fake server: request contents, retries, give-up, concurrency, tokens."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from densepolicy.serving.llm_client import ContextLengthError, LLMClient, LLMError, parse_prometheus, read_metrics

USER = [{"role": "user", "content": "What is 2 + 3?"}]


def run(coro):
    return asyncio.run(coro)


def test_chat_sends_sampling_parameters_and_returns_n_choices(fake_server):
    server = fake_server(["first", "second", "third"], model="m")

    async def go():
        async with LLMClient(server.base_url, "m") as client:
            return await client.chat(USER, n=3, temperature=0.7, top_p=0.9, max_tokens=20, seed=11,
                                     stop=["Observation:"])

    res = run(go())
    assert res.texts == ["first", "second", "third"]
    assert res.finish_reasons == ["stop"] * 3
    sent = server.requests[0]
    assert (sent["n"], sent["temperature"], sent["top_p"], sent["max_tokens"], sent["seed"]) == (3, 0.7, 0.9, 20, 11)
    assert sent["stop"] == ["Observation:"] and sent["messages"] == USER and sent["model"] == "m"


def test_every_request_fully_specifies_sampling_and_sends_the_stop_token_ids(fake_server):
    """vLLM fills every sampling parameter a request omits from the model's generation_config.json (Qwen2.5:
    top_k=20, repetition_penalty=1.05): each request names them all, neutral, and the model's stop token ids."""
    server = fake_server(["x", "y", "z"])

    async def go():
        async with LLMClient(server.base_url, "m", stop_token_ids=(128009,)) as client:
            await client.chat(USER, temperature=0.0)
        async with LLMClient(server.base_url, "m") as client:
            await client.chat(USER, n=2, temperature=0.8, top_p=0.95)

    run(go())
    for sent in server.requests:
        assert {k: sent[k] for k in ("top_k", "min_p", "repetition_penalty", "presence_penalty",
                                     "frequency_penalty")} == {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                                                               "presence_penalty": 0.0, "frequency_penalty": 0.0}
    assert server.requests[0]["stop_token_ids"] == [128009] and server.requests[0]["temperature"] == 0.0
    assert "stop_token_ids" not in server.requests[1] and server.requests[1]["top_p"] == 0.95


def test_seed_and_stop_are_omitted_when_not_given(fake_server):
    server = fake_server(["x"])
    run(LLMClient(server.base_url, "m").chat(USER))
    assert "seed" not in server.requests[0] and "stop" not in server.requests[0]
    assert server.requests[0]["temperature"] == 0.0 and server.requests[0]["n"] == 1


def test_stop_string_cuts_text_and_max_tokens_sets_length(fake_server):
    server = fake_server(["Action: look() End Action\nObservation: a fake one",
                          "one two three four five six"])

    async def go():
        client = LLMClient(server.base_url, "m")
        a = await client.chat(USER, stop=["Observation:", "NEVER"])
        b = await client.chat(USER, max_tokens=4)
        await client.aclose()
        return a, b

    a, b = run(go())
    assert a.texts == ["Action: look() End Action\n"] and a.finish_reasons == ["stop"]
    assert b.texts == ["one two three four"] and b.finish_reasons == ["length"]
    assert b.completion_tokens == 4


def test_token_counts_come_from_usage_and_accumulate(fake_server):
    server = fake_server(lambda messages, request: "alpha beta gamma")

    async def go():
        async with LLMClient(server.base_url, "m") as client:
            r1 = await client.chat(USER, n=2)
            r2 = await client.chat(USER + [{"role": "assistant", "content": "5"}, {"role": "user", "content": "ok"}])
            return r1, r2, client.stats

    r1, r2, stats = run(go())
    assert r1.completion_tokens == 6 and r2.completion_tokens == 3
    assert r2.prompt_tokens > r1.prompt_tokens > 0
    assert stats["prompt_tokens"] == r1.prompt_tokens + r2.prompt_tokens
    assert stats["completion_tokens"] == 9 and stats["calls"] == 2 and stats["retries"] == 0


def test_logprobs_are_returned_per_choice(fake_server):
    server = fake_server(["a b", "c", "d"])
    res = run(LLMClient(server.base_url, "m").chat(USER, n=2, logprobs=True))
    assert server.requests[0]["logprobs"] is True
    assert [[t["token"] for t in choice] for choice in res.logprobs] == [["a", "b"], ["c"]]
    assert run(LLMClient(server.base_url, "m").chat(USER)).logprobs is None


def test_retries_500_dropped_connection_and_timeout_then_succeeds(fake_server):
    server = fake_server(["finally"], fail_plan={0: "500", 1: "drop", 2: "hang"}, hang_s=30)

    async def go():
        async with LLMClient(server.base_url, "m", timeout_s=0.5, max_retries=3, backoff_s=0.01) as client:
            return await client.chat(USER), client.stats

    res, stats = run(go())
    assert res.texts == ["finally"]
    assert len(server.requests) == 4 and stats["retries"] == 3 and stats["calls"] == 1


def test_gives_up_after_max_retries_with_clear_error(fake_server):
    server = fake_server(["never served"], fail_plan={i: "500" for i in range(3)})
    client = LLMClient(server.base_url, "m", max_retries=2, backoff_s=0.01)
    with pytest.raises(LLMError) as info:
        run(client.chat(USER))
    message = str(info.value)
    assert server.base_url in message and "3 attempts" in message and "HTTP 500" in message
    assert len(server.requests) == 3 and client.stats["failures"] == 1


def test_unreachable_server_is_retried_then_named_in_the_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LLMClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_s=0.01)
    with pytest.raises(LLMError, match=rf"127\.0\.0\.1:{port}.*2 attempts.*ConnectError"):
        run(client.chat(USER))


def test_context_length_error_is_not_retried(fake_server):
    server = fake_server(["x"], max_model_len=50)
    client = LLMClient(server.base_url, "m", backoff_s=0.01)
    long_prompt = [{"role": "user", "content": "word " * 60}]
    with pytest.raises(ContextLengthError, match="maximum context length is 50 tokens"):
        run(client.chat(long_prompt, max_tokens=10))
    with pytest.raises(ContextLengthError, match="max_tokens=51 cannot be greater than max_model_len=50"):
        run(client.chat(USER, max_tokens=51))
    assert len(server.requests) == 2 and client.stats["retries"] == 0


def test_other_client_errors_are_not_retried(fake_server):
    server = fake_server(["x"], model="served-name")
    client = LLMClient(server.base_url, "wrong-name", backoff_s=0.01)
    with pytest.raises(LLMError, match="HTTP 404.*wrong-name") as info:
        run(client.chat(USER))
    assert not isinstance(info.value, ContextLengthError)
    assert len(server.requests) == 1


def test_concurrency_limit_is_honoured(fake_server):
    server = fake_server(lambda m, r: "ok", latency_s=0.2, batch_capacity=100)

    async def go():
        async with LLMClient(server.base_url, "m", max_concurrency=4) as client:
            start = time.monotonic()
            await asyncio.gather(*(client.chat(USER) for _ in range(16)))
            return time.monotonic() - start, client.stats

    elapsed, stats = run(go())
    assert server.max_running_seqs == 4  # the server never saw more than 4 at once
    assert stats["max_in_flight"] == 4 and stats["calls"] == 16
    assert 3.0 < stats["mean_in_flight"] <= 4.0
    assert elapsed >= 4 * 0.2 * 0.95  # 16 requests in waves of 4


def test_client_survives_successive_event_loops(fake_server):
    server = fake_server(["a", "b"])
    client = LLMClient(server.base_url, "m")
    assert run(client.chat(USER)).texts == ["a"]
    assert run(client.chat(USER)).texts == ["b"]  # second asyncio.run: new loop, new pool


def test_metrics_are_parsed_from_the_server_root(fake_server):
    server = fake_server(["one two"])

    async def go():
        async with LLMClient(server.base_url, "m") as client:
            await client.chat(USER)
            return await client.metrics()

    metrics = run(go())
    assert metrics["vllm:generation_tokens_total"] == 2.0
    assert metrics["vllm:num_requests_running"] == 0.0
    assert read_metrics(server.base_url) == metrics  # the synchronous one-call form the benchmarks use


def test_parse_prometheus_sums_label_sets_and_skips_comments():
    text = ('# HELP x y\n# TYPE a counter\na{model_name="m",x="1 2"} 3\na{model_name="n"} 4.5\n'
            'b 1e3\nc{engine="0"} NaN\n')
    parsed = parse_prometheus(text)
    assert parsed["a"] == 7.5 and parsed["b"] == 1000.0 and "x" not in parsed


def test_many_requests_in_flight_spread_over_small_connection_pools(fake_server):
    """64 requests at once still run 64 at a time, over pools of `POOL_CONNECTIONS` connections each (one
    httpx pool of 64 connections spent more time on its bookkeeping than the tree sampler on its work)."""
    from densepolicy.serving import llm_client
    server = fake_server(lambda messages, request: "ok", latency_s=0.2, batch_capacity=64)

    async def go():
        async with LLMClient(server.base_url, "m", max_concurrency=64) as client:
            await asyncio.gather(*(client.chat([{"role": "user", "content": str(i)}]) for i in range(128)))
            pools = client._http.pools
            assert len(pools) == 64 // llm_client.POOL_CONNECTIONS
            return client.stats
    stats = run(go())
    assert stats["max_in_flight"] == 64 and stats["calls"] == 128
    assert server.max_running_seqs == 64          # no pool queued a request while another had room
