"""A scripted, OpenAI-compatible fake chat server for fast tests and benchmarks (no model, no GPU).

It runs in a background thread of the test process (stdlib ``ThreadingHTTPServer``) and imitates the
parts of vLLM's API the project uses:

* ``POST /v1/chat/completions``: ``n`` choices, ``stop`` strings (text cut before the first stop,
  finish_reason "stop"), ``max_tokens`` (word-ish tokens, finish_reason "length"), ``usage`` with
  approximate token counts, optional ``logprobs``; with ``max_model_len``, like vLLM 0.32, a prompt
  that fills the context or ``max_tokens > max_model_len`` gets HTTP 400, and otherwise ``max_tokens``
  is shrunk to the room left.
* ``GET /health``, ``GET /v1/models``, ``GET /metrics`` (Prometheus text with vLLM's gauge names
  ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` and token counters).

Timing model (what makes it usable for throughput benchmarks): the server has ``batch_capacity``
sequence slots. A request with ``n`` choices needs ``min(n, batch_capacity)`` slots, holds them for
``latency_s`` seconds, and waits in a FIFO queue while not enough slots are free. So up to
``batch_capacity`` sequences overlap, as on a continuous-batching server whose step time does
not depend on batch size, and anything beyond waits.

    with FakeOpenAIServer(["Action: look() End Action", "Answer: 4"], latency_s=0.05) as server:
        client = LLMClient(server.base_url, server.model_name)
        ...
        server.requests[0]["seed"]   # every request body, in arrival order

``responder``: a list of strings (one per choice, consumed in arrival order; running out is an HTTP
400 naming the problem) or ``callable(messages, request) -> str``, called once per choice; ``request``
is the JSON body plus ``"choice_index"``.

``fail_plan``: ``{request_number: action}`` with 0-based request numbers in arrival order (the same
numbering as ``requests``). Actions: ``"500"`` (HTTP 500), ``"hang"`` (no answer for ``hang_s``,
then the connection is closed), ``"drop"`` (connection closed without an answer),
``"context_length"`` (vLLM's HTTP 400 for an over-long prompt), ``"404"`` (vLLM's model-not-found),
``"400"`` (a bad request that is not about the context), ``"malformed"`` (HTTP 200 whose body is not
JSON, e.g. an HTML page of a proxy) and ``"malformed_json"`` (HTTP 200 JSON without ``choices``).
``fault = action`` applies an action to every request until it is set back to None, and
``restart(down_s)`` imitates a server restart (connections refused for ``down_s`` seconds, then the
server answers again on the same port).
"""
from __future__ import annotations

import collections
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

Responder = list[str] | Callable[[list[dict[str, Any]], dict[str, Any]], str]
FAIL_ACTIONS = ("500", "hang", "drop", "context_length", "404", "400", "malformed", "malformed_json")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
PER_MESSAGE_TOKENS = 4  # chat-template overhead per message (role markers), roughly ChatML's


def count_tokens(text: str) -> int:
    """Approximate token count: words and single punctuation marks."""
    return len(_TOKEN_RE.findall(text))


def truncate_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut `text` after its first `max_tokens` word-ish tokens; returns (text, was_cut)."""
    for i, match in enumerate(_TOKEN_RE.finditer(text)):
        if i == max_tokens:
            return text[: match.start()].rstrip(), True
    return text, False


def apply_stop(text: str, stop: list[str]) -> tuple[str, str | None]:
    """Cut `text` before the earliest occurrence of any stop string; returns (text, matched stop)."""
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if not hits:
        return text, None
    index, matched = min(hits)
    return text[:index], matched


class _BatchSlots:
    """`capacity` sequence slots handed out first-come first-served (no starvation of big requests)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self.running = 0
        self.waiting = 0
        self.max_running_seqs = 0
        self._queue: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()
        self.closed = False

    def acquire(self, k: int) -> bool:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self.waiting += 1
            self._cond.wait_for(lambda: self.closed or (self._queue[0] is ticket and self.free >= k))
            self._queue.remove(ticket)
            self.waiting -= 1
            if self.closed:
                self._cond.notify_all()
                return False
            self.free -= k
            self.running += 1
            self.max_running_seqs = max(self.max_running_seqs, self.capacity - self.free)
            self._cond.notify_all()
            return True

    def release(self, k: int) -> None:
        with self._cond:
            self.free += k
            self.running -= 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class FakeOpenAIServer:
    """Scripted OpenAI-compatible chat server in a background thread. See the module docstring.

    Args:
        responder: list of reply strings (served in order) or ``callable(messages, request) -> str``.
        latency_s: seconds each request holds its batch slots (simulated generation time).
        batch_capacity: sequence slots; requests needing more than the free slots wait (FIFO).
        fail_plan: ``{0-based request number: action}`` (FAIL_ACTIONS, see the module docstring).
        model: served model name; when set, requests for another model get vLLM's 404.
        max_model_len: when set, enforce the context like vLLM (see the module docstring).
        hang_s: how long a "hang" request stays silent (shutdown ends it early).
    """

    def __init__(self, responder: Responder, latency_s: float = 0.0, batch_capacity: int = 64,
                 fail_plan: dict[int, str] | None = None, model: str | None = None,
                 max_model_len: int | None = None, hang_s: float = 600.0, host: str = "127.0.0.1") -> None:
        if batch_capacity < 1:
            raise ValueError(f"batch_capacity must be >= 1, got {batch_capacity}")
        for number, action in (fail_plan or {}).items():
            if action not in FAIL_ACTIONS:
                raise ValueError(f"fail_plan[{number}] = {action!r}; expected one of {FAIL_ACTIONS}")
        self.responder = responder
        self.latency_s = latency_s
        self.batch_capacity = batch_capacity
        self.fail_plan = dict(fail_plan or {})
        self.model = model
        self.max_model_len = max_model_len
        self.hang_s = hang_s
        self.host = host
        self.requests: list[dict[str, Any]] = []
        """Every chat request body received, in arrival order (failed ones included)."""
        self.counters = {"prompt_tokens": 0, "generation_tokens": 0, "success": 0}
        self._slots = _BatchSlots(batch_capacity)
        self._lock = threading.Lock()
        self._next_reply = 0
        self._stopping = threading.Event()
        self._down = threading.Event()
        self.fault: str | None = None
        """An action of FAIL_ACTIONS applied to every request while set (None = serve normally)."""
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        """Bind a free port on `host` and serve in a daemon thread."""
        self._listen(0)
        return self

    def restart(self, down_s: float) -> threading.Thread:
        """Imitate a server restart: close the listening socket and drop requests on open connections
        for `down_s` seconds, then serve again on the same port. Returns the thread that brings it back."""
        port = self.port
        self._down.set()
        self._close_listener()

        def back() -> None:
            time.sleep(down_s)
            if not self._stopping.is_set():
                self._listen(port)
                self._down.clear()

        thread = threading.Thread(target=back, name="fake-openai-server-restart", daemon=True)
        thread.start()
        return thread

    def _listen(self, port: int) -> None:
        handler = type("Handler", (_Handler,), {"fake": self})
        httpd = ThreadingHTTPServer((self.host, port), handler, bind_and_activate=False)
        httpd.daemon_threads = True
        httpd.request_queue_size = 1024  # many concurrent clients connect at once
        httpd.server_bind()
        httpd.server_activate()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai-server", daemon=True)
        self._thread.start()

    def _close_listener(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def stop(self) -> None:
        """Stop serving; hanging and queued requests are released and their connections closed."""
        self._stopping.set()
        self._slots.close()
        self._close_listener()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("fake server is not running")
        return self._httpd.server_address[1]

    @property
    def root_url(self) -> str:
        """``http://host:port`` (``/health``, ``/metrics``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, what `LLMClient` takes."""
        return self.root_url + "/v1"

    @property
    def model_name(self) -> str:
        return self.model or "fake-model"

    @property
    def max_running_seqs(self) -> int:
        """Peak number of sequence slots in use at once (≤ batch_capacity)."""
        return self._slots.max_running_seqs

    # -- request handling (called from handler threads) -------------------------------------------
    def handle_chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any] | str | None]:
        """(HTTP status, JSON reply or raw text); a reply of None means: close the connection without answering."""
        if self._down.is_set():  # restarting: a request on a connection opened before the restart
            return 0, None
        with self._lock:
            number = len(self.requests)
            self.requests.append(body)
        action = self.fail_plan.get(number, self.fault)
        if action == "drop":
            return 0, None
        if action == "hang":
            self._stopping.wait(self.hang_s)
            return 0, None
        if action == "500":
            return 500, _error(f"fake server: scripted failure of request {number}", "InternalServerError", 500)
        if action == "context_length":
            return 400, _error(_context_message(self.max_model_len or 2048, 4096), "BadRequestError", 400)
        if action == "404":
            return 404, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError", 404)
        if action == "400":
            return 400, _error(f"fake server: scripted bad request {number} (temperature must be non-negative)",
                               "BadRequestError", 400)
        if action == "malformed":
            return 200, "<html><body>502 Bad Gateway (fake proxy page)</body></html>"
        if action == "malformed_json":
            return 200, {"id": f"chatcmpl-fake-{number}", "object": "chat.completion", "choices": None}
        if self.model is not None and body.get("model") != self.model:
            return 404, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError", 404)
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 400, _error("fake server: 'messages' must be a list", "BadRequestError", 400)
        n = int(body.get("n") or 1)
        max_tokens = body.get("max_tokens")
        prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + PER_MESSAGE_TOKENS for m in messages)
        if self.max_model_len is not None:  # vLLM 0.32: reject what can never fit, else shrink max_tokens
            if max_tokens is not None and max_tokens > self.max_model_len:
                return 400, _error(f"max_tokens={max_tokens} cannot be greater than max_model_len="
                                   f"{self.max_model_len}. Please request fewer output tokens.", "BadRequestError", 400)
            if prompt_tokens >= self.max_model_len:
                return 400, _error(_context_message(self.max_model_len, prompt_tokens), "BadRequestError", 400)
            max_tokens = min(max_tokens or self.max_model_len, self.max_model_len - prompt_tokens)
        try:
            raw_texts = self._replies(messages, body, n)
        except Exception as exc:  # noqa: BLE001 - a scripting mistake must fail the test quickly, not be retried
            return 400, _error(f"fake server responder failed: {type(exc).__name__}: {exc}", "BadRequestError", 400)

        slots = min(n, self.batch_capacity)
        if not self._slots.acquire(slots):
            return 0, None
        try:
            if self.latency_s > 0:
                self._stopping.wait(self.latency_s)
        finally:
            self._slots.release(slots)
        if self._stopping.is_set():
            return 0, None

        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        choices, completion_tokens = [], 0
        for index, raw in enumerate(raw_texts):
            text, stop_reason = apply_stop(raw, stop)
            finish = "stop"
            if max_tokens is not None:
                text, cut = truncate_tokens(text, int(max_tokens))
                if cut:
                    finish, stop_reason = "length", None
            tokens = _TOKEN_RE.findall(text)
            completion_tokens += len(tokens)
            logprobs = None
            if body.get("logprobs"):
                logprobs = {"content": [{"token": t, "logprob": -1.0, "bytes": None, "top_logprobs": []}
                                        for t in tokens]}
            choices.append({"index": index, "message": {"role": "assistant", "content": text},
                            "finish_reason": finish, "logprobs": logprobs,
                            "stop_reason": stop_reason})
        with self._lock:
            self.counters["prompt_tokens"] += prompt_tokens
            self.counters["generation_tokens"] += completion_tokens
            self.counters["success"] += 1
        return 200, {
            "id": f"chatcmpl-fake-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _replies(self, messages: list[dict[str, Any]], body: dict[str, Any], n: int) -> list[str]:
        if callable(self.responder):
            return [str(self.responder(messages, {**body, "choice_index": i})) for i in range(n)]
        with self._lock:
            start = self._next_reply
            if start + n > len(self.responder):
                raise IndexError(f"scripted responses exhausted: {len(self.responder)} given, "
                                 f"request wants replies {start}..{start + n - 1}")
            self._next_reply += n
        return list(self.responder[start:start + n])

    def models_reply(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "densepolicy",
                                            "max_model_len": self.max_model_len}]}

    def metrics_text(self) -> str:
        label = f'{{model_name="{self.model_name}"}}'
        with self._lock:
            counters = dict(self.counters)
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {float(self._slots.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} {float(self._slots.waiting)}",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{label} {float(counters['prompt_tokens'])}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{label} {float(counters['generation_tokens'])}",
            "# TYPE vllm:request_success_total counter",
            f"vllm:request_success_total{label} {float(counters['success'])}",
        ]
        return "\n".join(lines) + "\n"


def _error(message: str, kind: str, code: int) -> dict[str, Any]:
    """vLLM's error body."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _context_message(max_model_len: int, prompt_tokens: int) -> str:
    """vLLM 0.32's wording for a prompt that leaves no room for output."""
    return (f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
            f"{prompt_tokens} input tokens, which exceeds this limit even without any output tokens. "
            f"Please reduce the length of the input prompt.")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is exercised
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib signature (format shadows the builtin)
        log.debug("fake server: " + format, *args)

    def _send(self, status: int, payload: dict[str, Any] | str, content_type: str = "application/json") -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # the stdlib name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send(200, "", "text/plain")
        elif path == "/v1/models":
            self._send(200, self.fake.models_reply())
        elif path == "/metrics":
            self._send(200, self.fake.metrics_text(), "text/plain; version=0.0.4")
        else:
            self._send(404, _error(f"no route {path}", "NotFoundError", 404))

    def do_POST(self) -> None:  # the stdlib name
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path != "/v1/chat/completions":
            self._send(404, _error(f"no route {path}", "NotFoundError", 404))
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as exc:
            self._send(400, _error(f"invalid JSON body: {exc}", "BadRequestError", 400))
            return
        status, reply = self.fake.handle_chat(body)
        if reply is None:
            self.close_connection = True  # the client sees the connection drop without an answer
            return
        self._send(status, reply, "text/html" if isinstance(reply, str) else "application/json")
