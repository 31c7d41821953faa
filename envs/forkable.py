"""Live objects hosted in their own processes, forkable with `os.fork` (a cheap snapshot).

A `ForkServer` starts one *zygote* process that imports the heavy modules once (`preload`).
`spawn()` asks the zygote to fork a *host* process that builds an object from a factory
(`"module:callable"`) and serves method calls on it over a unix socket. `Remote.fork()` makes
the host `os.fork()` itself: the copy continues with an identical in-memory state and is
connected to the caller over a new socketpair whose end is passed back with `SCM_RIGHTS`.

    server = ForkServer(preload=["textworld"])              # one zygote per worker
    env = server.spawn("envs.alfworld_game:Game", "path/to/game", timeout=60)
    env.call("step", "go to desk 1", timeout=10)             # -> whatever Game.step returns
    child = env.fork()                                       # independent copy, same state
    child.call("step", "take pen 1 from desk 1")             # env is unaffected
    child.close(); env.close(); server.close()

API
- `ForkServer(preload=(), env=None, codec="pickle", zygote_setup=None, name="forkable")`
  `env`: the zygote's environment (None = inherit the caller's; pass a dict to scrub it).
  `codec`: "pickle" (trusted hosts; any picklable values) or "json" (hosts that run untrusted
  code: the caller never unpickles what they send). `max_message_bytes` caps what a host may send.
  `zygote_setup`: `"module:callable"` run once in the zygote after preloading (e.g. namespaces for
  a sandbox).
- `ForkServer.spawn(factory, *args, setup=None, callback=None, timeout=60, **kwargs) -> Remote`
  `setup`: `"module:callable"` run in the new host before the factory (e.g. rlimits).
  `callback(name, args, kwargs) -> result` runs in the caller whenever the host calls
  `host_callback(name, *args, **kwargs)` during a call (tools of a sandbox, for instance).
- `Remote.call(method, *args, timeout=None, **kwargs)`: runs `obj.method(*args, **kwargs)` in the
  host. Raises `RemoteError` (the host raised; the host lives on), `CallTimeout` (the host is
  killed: its state is unknown) or `RemoteDied`. Time spent in `callback` does not count.
  Methods whose names start with `_` are refused.
- `Remote.fork(timeout=30) -> Remote`: `obj._before_fork()` (if defined) runs before `os.fork`, and
  the copy's `obj._after_fork()` (if defined) before it serves (e.g. to undo `random`'s reseeding
  at fork, so that a fork behaves exactly like a replay).
- `Remote.close()`: kills the host's whole process tree (its descendants, its session and
  process group) and, because hosts live under the zygote (a child subreaper), any process
  orphaned by a host's code. Idempotent. `ForkServer.close()` closes every remote and the zygote.
  A host that runs under a uid of its own (the zygote's hosts may switch to one, as sandbox lineages
  do; root callers only) takes every process of that uid with it when it is the last live host
  under that uid (nothing can leave a uid, while a process tree is left by re-parenting); while
  others live, its tree is killed with every process of the uid frozen, so it cannot change.
- `kill_process_tree(pid)`, `kill_user_processes(uid)`, `kill_tree_of_user(pid, uid)`: the same
  killing, usable on its own; `uids_in_use()`: the real uids of the live processes (a uid of its own
  must not be one of them).
The zygote dies when the caller closes it or exits (its control socket reaches EOF), killing
every process it adopted.
"""
from __future__ import annotations

import ctypes
import importlib
import json
import os
import pickle
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


class RemoteError(RuntimeError):
    """The hosted object raised; `remote_type` and `remote_traceback` describe the exception."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str = ""):
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


class RemoteDied(RuntimeError):
    """The host process is gone (crashed, was killed, or closed the connection)."""


class CallTimeout(TimeoutError):
    """A call did not answer in time; the host has been killed."""


# ----------------------------------------------------------------------------- wire format
class _Codec:
    def __init__(self, name: str):
        if name not in ("pickle", "json"):
            raise ValueError(f"codec must be 'pickle' or 'json', got {name!r}")
        self.name = name

    def dumps(self, obj: Any) -> bytes:
        if self.name == "json":
            return json.dumps(obj).encode()
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return json.loads(data) if self.name == "json" else pickle.loads(data)


def _send(sock: socket.socket, codec: _Codec, obj: Any) -> None:
    data = codec.dumps(obj)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise CallTimeout("no answer in time")
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise RemoteDied("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, codec: _Codec, deadline: float | None = None,
          max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if size > max_bytes:
        raise RemoteDied(f"message of {size} bytes exceeds the {max_bytes}-byte limit")
    data = _recv_exact(sock, size, deadline)
    try:
        return codec.loads(data)
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError on hostile nesting
        raise RemoteDied(f"undecodable message ({type(exc).__name__})") from None


def resolve(spec: str) -> Callable[..., Any]:
    """`"package.module:attr"` -> the attribute."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"expected 'module:callable', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if option == _PR_GET_CHILD_SUBREAPER:
        out = ctypes.c_int(0)
        libc.prctl(option, ctypes.byref(out), 0, 0, 0)
        return out.value
    return libc.prctl(option, arg, 0, 0, 0)


# ----------------------------------------------------------------------------- killing
def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, sid) for every visible process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def _members(pid: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    """`pid`, its descendants, and everything in its session / process group, transitively."""
    found = {pid}
    changed = True
    while changed:
        changed = False
        for p, (ppid, pgid, sid) in table.items():
            if p not in found and (ppid in found or pgid == pid or sid == pid):
                found.add(p)
                changed = True
    return found


def _children(pid: int) -> list[int] | None:
    """Direct children of `pid` from /proc/<pid>/task/*/children; None if the kernel lacks that file."""
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids  # no such process
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            if os.path.exists(f"/proc/{pid}/task/{tid}"):
                return None
        except OSError:
            continue
    return kids


def _tree(pid: int) -> set[int] | None:
    """`pid` and its descendants (walking children files), or None when unsupported."""
    found, todo = {pid}, [pid]
    while todo:
        kids = _children(todo.pop())
        if kids is None:
            return None
        for kid in kids:
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def kill_process_tree(pid: int, rounds: int = 50) -> None:
    """SIGKILL `pid` with all its descendants (and, without /proc children files, its session and
    process group members), until none is left.

    Members are frozen with SIGSTOP first (a frozen process cannot fork). Killing members can
    wake frozen ones (the kernel sends SIGCONT to newly orphaned process groups), so the whole
    scan-freeze-kill cycle repeats until a scan finds nobody. Descendants that escape the tree by
    being re-parented end up under the zygote, whose unknown children `ForkServer` also kills."""
    if pid <= 1:
        return
    me = os.getpid()
    known: dict[int, str] = {pid: _start_time(pid)}  # pid -> start time, so a reused pid is left alone

    def is_ours(p: int) -> bool:
        return _state(p) not in ("Z", "X", "") and _start_time(p) == known[p]

    def scan() -> set[int]:
        """Everything alive under any process we know of (children of a dying process are only
        re-parented once it has fully exited, so keep walking until every known one is dead)."""
        for p in [p for p in known if is_ours(p)]:
            tree = _tree(p)
            for q in tree if tree is not None else _members(p, _proc_table()):
                if q not in known and q != me:
                    known[q] = _start_time(q)
        return {p for p in known if is_ours(p)}

    for _ in range(rounds):
        alive = scan()
        if not alive:
            return
        for p in alive:
            _signal(p, signal.SIGSTOP)
        for p in alive | scan():
            _signal(p, signal.SIGKILL)
        time.sleep(0.0002)


def kill_user_processes(uid: int, timeout: float = 60.0) -> bool:
    """SIGKILL every process whose real uid is `uid` until a scan of /proc finds none (True), or
    `timeout` seconds have passed (False). Needs root; refuses root's and the caller's own uid.

    For hosts that run under a uid of their own (sandbox lineages): an unprivileged process cannot
    change its uid, so none of its descendants can leave this set, unlike a process tree, from
    which a child escapes by being re-parented when its parent dies between a scan and the kill.
    Nothing is killed before every process of the uid is seen stopped (`_freeze_user`): killing
    frees process slots, and a fork bomb at its RLIMIT_NPROC refills them from any member still
    running as fast as a scan can find new ones."""
    deadline = time.monotonic() + timeout
    while True:
        frozen = _freeze_user(uid, deadline)
        if frozen is None:
            return False
        if not frozen[0]:
            return True
        for p in frozen[0]:
            _signal(p, signal.SIGKILL)


def kill_tree_of_user(pid: int, uid: int, timeout: float = 60.0) -> bool:
    """SIGKILL `pid` and its descendants, all of real uid `uid`, while the other processes of that
    uid live on: True once they are dead, False after `timeout` (then `kill_process_tree` is the
    fallback). Every process of the uid is frozen first, so the tree cannot change while it is
    read and killed; the others are then continued, except those already stopped before."""
    deadline = time.monotonic() + timeout
    frozen = _freeze_user(uid, deadline)
    if frozen is None:
        return False
    members, stopped_before = frozen
    children: dict[int, list[int]] = {}
    for p, (ppid, _pgid, _sid) in _proc_table().items():
        if p in members:
            children.setdefault(ppid, []).append(p)
    tree, todo = set(), [pid] if pid in members else []
    while todo:
        p = todo.pop()
        tree.add(p)
        todo.extend(q for q in children.get(p, []) if q not in tree)
    for p in tree:
        _signal(p, signal.SIGKILL)
    while any(_state_of_uid(p, uid) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.001)
    for p in members - tree - stopped_before:
        _signal(p, signal.SIGCONT)
    return not any(_state_of_uid(p, uid) for p in tree)


def _freeze_user(uid: int, deadline: float) -> tuple[set[int], set[int]] | None:
    """SIGSTOP every live process of real uid `uid` until one scan finds them all stopped: (those
    processes, those of them already stopped when first seen), or None at `deadline`. A stopped
    process cannot fork; one with SIGSTOP pending may still finish a fork, so a process only counts
    once /proc shows it stopped, and the child of its fork is then visible to the next scan."""
    if uid in (0, os.getuid(), os.geteuid()):
        raise ValueError(f"refusing to signal every process of uid {uid}")
    me = os.getpid()
    seen_stopped: set[int] = set()
    signalled: set[int] = set()
    while True:
        states = {p: state for p in _pids() if p != me and (state := _state_of_uid(p, uid))}
        running = [p for p, state in states.items() if state not in ("T", "t")]
        seen_stopped |= {p for p, state in states.items() if state in ("T", "t") and p not in signalled}
        if not running:
            return set(states), seen_stopped & set(states)
        if time.monotonic() > deadline:
            return None
        for p in running:
            _signal(p, signal.SIGSTOP)
        signalled.update(running)


def uids_in_use() -> set[int]:
    """The real uids of every live process (from /proc/<pid>/status: the owner of /proc/<pid> itself is root
    for a process that switched uid, which the kernel makes non-dumpable)."""
    return {status[2] for pid in _pids() if (status := _status(pid)) is not None}


def _is_own_uid(uid: int | None) -> bool:
    """Is `uid` a uid of its own for a host: we are root, and it is neither root's nor ours?"""
    return uid is not None and os.geteuid() == 0 and uid not in (0, os.getuid())


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _state_of_uid(pid: int, uid: int) -> str:
    """The state letter of `pid` (R, S, T, ...) if its real uid is `uid` and it is not a zombie, else ""."""
    status = _status(pid)
    if status is None or status[2] != uid or status[0] in ("Z", "X"):
        return ""
    return status[0]


_STATUS_FIELDS = re.compile(rb"^State:\s*(\S).*?^PPid:\s*(\d+).*?^Uid:\s*(\d+)", re.M | re.S)  # in this order


def _status(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent pid, real uid) of `pid` from /proc/<pid>/status, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            fields = _STATUS_FIELDS.search(f.read())
    except OSError:
        return None
    if fields is None:
        return None
    return fields.group(1).decode(), int(fields.group(2)), int(fields.group(3))


def _start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), "" if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2:].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _ppid_uid(pid: int) -> tuple[int, int] | None:
    """(parent pid, real uid) of `pid`, or None."""
    status = _status(pid)
    return None if status is None else (status[1], status[2])


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2:].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


# ----------------------------------------------------------------------------- host side
_HOST_CONN: socket.socket | None = None
_HOST_CODEC: _Codec | None = None


def host_callback(name: str, *args: Any, **kwargs: Any) -> Any:
    """From inside a host: call the caller's `callback(name, args, kwargs)` and return its result."""
    if _HOST_CONN is None or _HOST_CODEC is None:
        raise RuntimeError("host_callback is only available inside a forkable host")
    _send(_HOST_CONN, _HOST_CODEC, {"op": "callback", "name": name, "args": list(args), "kwargs": kwargs})
    reply = _recv(_HOST_CONN, _HOST_CODEC)
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "callback failed"))
    return reply.get("result")


def _error_reply(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "type": type(exc).__name__, "error": str(exc),
            "traceback": traceback.format_exc(limit=20)}


def _fork_host(conn: socket.socket, codec: _Codec, obj: Any) -> None:
    """Answer a fork request: double-fork so the copy is adopted by the zygote, not by us."""
    before = getattr(obj, "_before_fork", None)
    if before is not None:
        before()
    ours, theirs = socket.socketpair()
    subreaper = _prctl(_PR_GET_CHILD_SUBREAPER)
    if subreaper:
        _prctl(_PR_SET_CHILD_SUBREAPER, 0)
    rfd, wfd = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            child = os.fork()
            if child == 0:
                os.close(rfd)
                os.close(wfd)
                conn.close()
                ours.close()
                os.setsid()
                if subreaper:
                    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
                after = getattr(obj, "_after_fork", None)
                if after is not None:
                    after()
                _serve(theirs, codec, obj)
                os._exit(0)
            os.write(wfd, str(child).encode())
        finally:
            os._exit(0)
    theirs.close()
    os.close(wfd)
    os.waitpid(middle, 0)
    with os.fdopen(rfd, "rb") as f:
        child_pid = int(f.read() or 0)
    if subreaper:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if not child_pid:
        ours.close()
        _send(conn, codec, {"ok": False, "type": "OSError", "error": "fork failed", "traceback": ""})
        return
    _send(conn, codec, {"ok": True, "result": {"pid": child_pid}})
    socket.send_fds(conn, [b"F"], [ours.fileno()])
    ours.close()


def _serve(conn: socket.socket, codec: _Codec, obj: Any) -> None:
    global _HOST_CONN, _HOST_CODEC
    _HOST_CONN, _HOST_CODEC = conn, codec
    while True:
        try:
            msg = _recv(conn, codec)
        except (RemoteDied, OSError, ValueError):
            return
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == "close":
            return
        if op == "fork":
            _fork_host(conn, codec, obj)
            continue
        if op != "call" or not isinstance(msg.get("method"), str) or msg["method"].startswith("_"):
            _send(conn, codec, {"ok": False, "type": "ValueError", "error": f"bad request {msg!r:.200}"})
            continue
        try:
            result = getattr(obj, msg["method"])(*msg.get("args", ()), **msg.get("kwargs", {}))
            reply = {"ok": True, "result": result}
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            reply = _error_reply(exc)
        try:
            _send(conn, codec, reply)
        except (TypeError, ValueError, pickle.PicklingError) as exc:
            _send(conn, codec, _error_reply(exc))


def _host_main(conn: socket.socket, request: dict[str, Any]) -> None:
    codec = _Codec(request["codec"])
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        if request.get("setup"):
            resolve(request["setup"])()
        obj = resolve(request["factory"])(*request["args"], **request["kwargs"])
    except BaseException as exc:  # noqa: BLE001 - reported to the caller, then exit
        _send(conn, codec, _error_reply(exc))
        os._exit(1)
    _send(conn, codec, {"ok": True, "result": {"pid": os.getpid()}})
    _serve(conn, codec, obj)


# ----------------------------------------------------------------------------- zygote side
def _kill_adopted() -> None:
    me = os.getpid()
    table = _proc_table()
    for pid, (ppid, _pgid, _sid) in table.items():
        if ppid == me:
            kill_process_tree(pid)


def _zygote_main() -> None:
    ctl_fd, preload, setup = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    ctl = socket.socket(fileno=ctl_fd)
    for module in preload:
        importlib.import_module(module)

    def on_term(*_: Any) -> None:
        _kill_adopted()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if setup:
        resolve(setup)()
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans of hosts come here, so close() can find them
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # auto-reap hosts and adopted orphans
    codec = _Codec("pickle")
    _send(ctl, codec, {"ok": True, "pid": os.getpid()})
    while True:
        try:
            request = _recv(ctl, codec)
        except (RemoteDied, OSError):
            break
        if request.get("op") == "exit":
            break
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ctl.close()
            ours.close()
            try:
                _host_main(theirs, request)
            finally:
                os._exit(0)
        theirs.close()
        _send(ctl, codec, {"ok": True, "pid": pid})
        socket.send_fds(ctl, [b"F"], [ours.fileno()])
        ours.close()
    _kill_adopted()
    os._exit(0)


_BOOTSTRAP = ("import json, sys; sys.path[:0] = json.loads(sys.argv.pop(1)); "
              "from envs.forkable import _zygote_main; _zygote_main()")


class ForkServer:
    """A zygote process that forks hosts (see the module docstring)."""

    def __init__(self, preload: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None,
                 codec: str = "pickle", zygote_setup: str | None = None, name: str = "forkable",
                 start_timeout: float = 120.0, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.codec = _Codec(codec)
        self.max_message_bytes = max_message_bytes
        self.name = name
        self._lock = threading.RLock()
        self._remotes: dict[int, Remote] = {}
        self._forks_in_flight = 0
        ctl, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parent.parent)
        paths = [root] + [p for p in sys.path if p and p != root]
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(paths), str(theirs.fileno()),
             json.dumps(list(preload)), zygote_setup or ""],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self._ctl = ctl
        self._ctl_codec = _Codec("pickle")
        try:
            hello = _recv(ctl, self._ctl_codec, time.monotonic() + start_timeout)
        except (CallTimeout, RemoteDied) as exc:
            self._proc.kill()
            raise RemoteDied(f"{name} zygote failed to start: {exc}") from None
        self.pid = hello["pid"]

    def spawn(self, factory: str, *args: Any, setup: str | None = None,
              callback: Callable[[str, list, dict], Any] | None = None, timeout: float = 60.0,
              **kwargs: Any) -> Remote:
        """Fork a host from the zygote that builds `factory(*args, **kwargs)`."""
        with self._lock:
            if self._ctl is None:
                raise RemoteDied(f"{self.name} fork server is closed")
            _send(self._ctl, self._ctl_codec, {"op": "spawn", "factory": factory, "args": list(args),
                                               "kwargs": kwargs, "setup": setup, "codec": self.codec.name})
            reply = _recv(self._ctl, self._ctl_codec, time.monotonic() + 30)
            _, fds, _, _ = socket.recv_fds(self._ctl, 1, 1)
            remote = Remote(socket.socket(fileno=fds[0]), reply["pid"], self, callback)
            self._remotes[remote.pid] = remote
        try:
            remote._expect_ready(timeout)
        except BaseException:
            remote.close()
            raise
        ppid_uid = _ppid_uid(remote.pid)  # read before any hosted code ran: the factory is trusted
        remote.uid = None if ppid_uid is None else ppid_uid[1]
        return remote

    def _register(self, remote: Remote) -> None:
        self._remotes[remote.pid] = remote

    def _forget(self, remote: Remote) -> None:
        with self._lock:
            if self._remotes.get(remote.pid) is remote:
                del self._remotes[remote.pid]
            self._kill_orphans()

    def _own_uid(self, closing: Remote) -> tuple[int | None, bool]:
        """(`closing`'s uid if it is a uid of its own: not root's, not ours, and we are root, else None;
        whether no other live host, nor a fork in flight whose copy would share it, runs under it)."""
        uid = closing.uid
        if not _is_own_uid(uid):
            return None, False
        sole = not self._forks_in_flight and not any(r.uid == uid for r in self._remotes.values() if r is not closing)
        return uid, sole

    def _kill_orphans(self) -> None:
        """Kill processes the zygote adopted that are not live hosts (detached by hosted code).
        Skipped while a fork is in flight (its copy is not registered yet); a later close sweeps."""
        if self._ctl is None or self._forks_in_flight:
            return
        live = set(self._remotes)
        kids = _children(self.pid)
        if kids is None:
            kids = [p for p, (ppid, _pgid, _sid) in _proc_table().items() if ppid == self.pid]
        for pid in kids:
            if pid not in live and _state(pid) not in ("Z", "X", ""):
                ppid_uid = _ppid_uid(pid)
                uid = None if ppid_uid is None else ppid_uid[1]
                if not (_is_own_uid(uid) and kill_tree_of_user(pid, uid)):
                    kill_process_tree(pid)

    def close(self) -> None:
        """Close every remote, then stop the zygote (which kills whatever it still adopted)."""
        with self._lock:
            for remote in list(self._remotes.values()):
                remote.close()
            if self._ctl is not None:
                try:
                    _send(self._ctl, self._ctl_codec, {"op": "exit"})
                except OSError:
                    pass
                self._ctl.close()
                self._ctl = None
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_process_tree(self._proc.pid)
            self._proc.wait()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Remote:
    """Caller-side handle of one host process (see the module docstring)."""

    def __init__(self, sock: socket.socket, pid: int, server: ForkServer,
                 callback: Callable[[str, list, dict], Any] | None):
        self._sock: socket.socket | None = sock
        self.pid = pid
        self.server = server
        self.callback = callback
        self._start_time = _start_time(pid)  # to tell our process from a later one reusing the pid
        self.uid: int | None = None  # the host's real uid once it is ready (see ForkServer._own_uid)

    @property
    def alive(self) -> bool:
        return self._sock is not None

    def _expect_ready(self, timeout: float | None) -> None:
        self._roundtrip(None, timeout)

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run `method(*args, **kwargs)` on the hosted object and return its result."""
        return self._roundtrip({"op": "call", "method": method, "args": list(args), "kwargs": kwargs}, timeout)

    def _roundtrip(self, request: dict[str, Any] | None, timeout: float | None) -> Any:
        if self._sock is None:
            raise RemoteDied(f"host {self.pid} is closed")
        codec = self.server.codec
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if request is not None:
                _send(self._sock, codec, request)
            while True:
                reply = _recv(self._sock, codec, deadline, self.server.max_message_bytes)
                if isinstance(reply, dict) and reply.get("op") == "callback":
                    started = time.monotonic()
                    _send(self._sock, codec, self._run_callback(reply))
                    if deadline is not None:
                        deadline += time.monotonic() - started
                    continue
                break
        except CallTimeout:
            self.close()
            raise CallTimeout(f"host {self.pid} did not answer within {timeout} s; it was killed") from None
        except (RemoteDied, OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            self.close()
            raise RemoteDied(f"host {self.pid} died: {exc}") from None
        if not isinstance(reply, dict) or "ok" not in reply:
            self.close()
            raise RemoteDied(f"host {self.pid} sent a malformed reply")
        if not reply["ok"]:
            raise RemoteError(str(reply.get("type")), str(reply.get("error")), str(reply.get("traceback", "")))
        return reply.get("result")

    def _run_callback(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self.callback is None:
            return {"ok": False, "error": "no callback registered"}
        try:
            args, kwargs = msg.get("args", []), msg.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise TypeError("callback arguments must be a list and a dict")
            return {"ok": True, "result": self.callback(str(msg.get("name")), args, kwargs)}
        except Exception as exc:  # noqa: BLE001 - the host sees the error message
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def fork(self, timeout: float = 30.0) -> Remote:
        """An independent host continuing from this host's current in-memory state."""
        if self._sock is None:
            raise RemoteDied(f"host {self.pid} is closed")
        server = self.server
        with server._lock:
            server._forks_in_flight += 1  # the copy is the zygote's child before we know its pid
        try:
            result = self._roundtrip({"op": "fork"}, timeout)
            try:
                _, fds, _, _ = socket.recv_fds(self._sock, 1, 1)
            except (OSError, AttributeError) as exc:
                self.close()
                raise RemoteDied(f"host {self.pid} died while forking: {exc}") from None
            if not fds:
                self.close()
                raise RemoteDied(f"host {self.pid} sent no socket for its fork")
            pid = int(result["pid"]) if isinstance(result, dict) and isinstance(result.get("pid"), int) else 0
            with server._lock:
                if not self._plausible_fork(pid):  # a host running hostile code may forge the reply
                    os.close(fds[0])
                    self.close()
                    raise RemoteDied(f"host {self.pid} answered the fork with an implausible pid {pid}")
                child = Remote(socket.socket(fileno=fds[0]), pid, server, self.callback)
                child.uid = self.uid  # `_plausible_fork` checked that the copy runs under our uid
                server._register(child)
        finally:
            with server._lock:
                server._forks_in_flight -= 1
        return child

    def _plausible_fork(self, pid: int) -> bool:
        """A fork of this host is an unregistered child of the zygote with the host's uid."""
        server = self.server
        if pid <= 1 or pid in (server.pid, os.getpid()) or pid in server._remotes:
            return False
        mine, theirs = _ppid_uid(self.pid), _ppid_uid(pid)
        return theirs is not None and theirs[0] == server.pid and (mine is None or mine[1] == theirs[1])

    def close(self) -> None:
        """Kill the host and everything it started. Idempotent."""
        if self._sock is None:
            return
        try:
            self._sock.close()
        finally:
            self._sock = None
            with self.server._lock:
                uid, sole = self.server._own_uid(self)
                # nothing can leave a uid, while a process tree is left by re-parenting
                swept = uid is not None and sole and kill_user_processes(uid)
                if not swept and _start_time(self.pid) == self._start_time:
                    if not (uid is not None and kill_tree_of_user(self.pid, uid)):
                        kill_process_tree(self.pid)
            self.server._forget(self)  # also kills what a vanished host left behind

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
