"""The machine-wide vLLM lock of the benchmarks (`densepolicy.file_lock.machine_vllm_lock`)."""
from __future__ import annotations

import fcntl
import threading
import time

from densepolicy.file_lock import machine_vllm_lock


def test_a_second_holder_waits_says_so_once_and_gets_the_lock_when_it_is_released(tmp_path, monkeypatch):
    lock_file = tmp_path / "vllm.lock"
    monkeypatch.setenv("DENSEPOLICY_VLLM_LOCK", str(lock_file))
    other = open(lock_file, "a+")  # another holder (its own open file description, as another process has)
    fcntl.flock(other, fcntl.LOCK_EX)
    released_at: list[float] = []

    def release() -> None:
        time.sleep(0.5)
        released_at.append(time.monotonic())
        other.close()

    said: list[str] = []
    threading.Thread(target=release).start()
    with machine_vllm_lock(said.append) as path:
        got_at = time.monotonic()
        assert path == lock_file
        probe = open(lock_file, "a+")
        try:  # held now: nobody else can take it
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("the lock was not held inside the block")
        except BlockingIOError:
            pass
        finally:
            probe.close()
    assert released_at and got_at >= released_at[0]
    assert len(said) == 1 and str(lock_file) in said[0]
    with open(lock_file, "a+") as after:  # released after the block
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_free_lock_is_taken_without_a_word(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSEPOLICY_VLLM_LOCK", str(tmp_path / "vllm.lock"))
    said: list[str] = []
    with machine_vllm_lock(said.append):
        pass
    assert said == []
