"""The fake server's contract: batch-slot timing model, scripted replies, failures, health/models/metrics."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from densepolicy.testing.fake_server import FakeOpenAIServer, apply_stop, truncate_tokens
from densepolicy.serving.llm_client import parse_prometheus


def post(server, body, timeout=10):
    request = urllib.request.Request(server.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(server, path):
    with urllib.request.urlopen(server.root_url + path, timeout=10) as response:
        return response.status, response.read().decode()


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_requests_beyond_batch_capacity_wait_for_a_slot(fake_server):
    latency = 1.0  # long enough that all six requests arrive during the first wave, even on a loaded machine
    server = fake_server(lambda m, r: "ok", latency_s=latency, batch_capacity=2)
    results, seen_waiting = [], []
    threads = [threading.Thread(target=lambda: results.append(post(server, BODY))) for _ in range(6)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() - start < 0.8 * latency:  # poll until every request is running or queued
        metrics = parse_prometheus(get(server, "/metrics")[1])
        if metrics["vllm:num_requests_running"] + metrics["vllm:num_requests_waiting"] == 6:
            break
        time.sleep(0.02)
    seen_waiting.append(metrics)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    assert [status for status, _ in results] == [200] * 6
    assert server.max_running_seqs == 2
    assert seen_waiting[0]["vllm:num_requests_running"] == 2 and seen_waiting[0]["vllm:num_requests_waiting"] == 4
    assert elapsed >= 3 * latency * 0.95  # three waves of two


def test_n_choices_take_n_slots(fake_server):
    server = fake_server(lambda m, r: "ok", latency_s=0.2, batch_capacity=4)
    threads = [threading.Thread(target=post, args=(server, {**BODY, "n": 3})) for _ in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 2 * 0.2 * 0.95  # 3 + 3 sequences do not fit 4 slots together
    assert server.max_running_seqs == 3


def test_callable_responder_sees_messages_request_and_choice_index(fake_server):
    seen = []

    def responder(messages, request):
        seen.append((messages[-1]["content"], request["seed"], request["choice_index"]))
        return f"reply {request['choice_index']}"

    server = fake_server(responder)
    status, reply = post(server, {**BODY, "n": 2, "seed": 5})
    assert status == 200
    assert [c["message"]["content"] for c in reply["choices"]] == ["reply 0", "reply 1"]
    assert seen == [("hi", 5, 0), ("hi", 5, 1)]
    assert server.requests[0]["seed"] == 5 and "choice_index" not in server.requests[0]


def test_exhausted_script_and_broken_responder_fail_fast_with_400(fake_server):
    server = fake_server(["only one"])
    assert post(server, BODY)[0] == 200
    status, reply = post(server, BODY)
    assert status == 400 and "exhausted" in reply["error"]["message"]

    def broken(messages, request):
        raise KeyError("oops")

    status, reply = post(fake_server(broken), BODY)
    assert status == 400 and "KeyError" in reply["error"]["message"]


def test_fail_plan_numbers_requests_from_zero(fake_server):
    server = fake_server(["a", "b"], fail_plan={1: "500", 2: "context_length"})
    assert post(server, BODY)[0] == 200
    assert post(server, BODY)[0] == 500
    status, reply = post(server, BODY)
    assert status == 400 and "maximum context length" in reply["error"]["message"]
    status, reply = post(server, BODY)
    assert status == 200 and reply["choices"][0]["message"]["content"] == "b"  # failures consume no reply


def test_max_model_len_rejects_long_prompts_and_shrinks_max_tokens(fake_server):
    server = fake_server(lambda m, r: "one two three four five six seven eight", max_model_len=10)
    status, reply = post(server, {**BODY, "max_tokens": 9})  # "hi" + 4 template tokens: 5 left
    assert status == 200 and reply["choices"][0]["message"]["content"] == "one two three four five"
    assert reply["choices"][0]["finish_reason"] == "length"
    status, reply = post(server, {**BODY, "messages": [{"role": "user", "content": "a b c d e f"}]})
    assert status == 400 and "prompt contains 10 input tokens" in reply["error"]["message"]


def test_fail_plan_rejects_unknown_actions():
    with pytest.raises(ValueError, match="fail_plan\\[0\\] = 'explode'"):
        FakeOpenAIServer(["x"], fail_plan={0: "explode"})


def test_health_models_and_metrics_endpoints(fake_server):
    server = fake_server(["x y z"], model="served", max_model_len=128)
    assert get(server, "/health")[0] == 200
    models = json.loads(get(server, "/v1/models")[1])
    assert models["data"][0]["id"] == "served" and models["data"][0]["max_model_len"] == 128
    post(server, {**BODY, "model": "served"})
    metrics = parse_prometheus(get(server, "/metrics")[1])
    assert metrics["vllm:generation_tokens_total"] == 3 and metrics["vllm:request_success_total"] == 1


def test_stop_and_truncation_helpers():
    assert apply_stop("abc STOP def END", ["END", "STOP"]) == ("abc ", "STOP")
    assert apply_stop("abc", ["x"]) == ("abc", None)
    assert truncate_tokens("Hello, world! Bye", 3) == ("Hello, world", True)
    assert truncate_tokens("a b", 5) == ("a b", False)


def test_stop_releases_hanging_requests():
    server = FakeOpenAIServer(["x"], fail_plan={0: "hang"}, hang_s=60).start()
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_expect_drop(server)))
    thread.start()
    time.sleep(0.2)
    start = time.monotonic()
    server.stop()
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - start < 5
    assert errors == [True]


def _expect_drop(server):
    try:
        post(server, BODY, timeout=30)
    except Exception:  # noqa: BLE001 - connection closed without an answer (the error type varies)
        return True
    return False
