"""A persistent, confined Python interpreter per episode, in its own process, forkable.

    sb = Sandbox()                         # or Sandbox(tools=["goto"], tool_handler=handle)
    sb.run("x = 21\\nprint(x * 2)")        # ExecResult(output="42\\n", timed_out=False, restarted=False)
    child = sb.fork()                      # os.fork of the live interpreter: `x` exists in both
    sb.close(); child.close()              # kills everything the code started

Observation text (`ExecResult.output`): stdout and stderr in the order written (by Python, C code or
child processes), with the value of bare top-level expressions echoed as in `python -i`, but no
prompts. Each top-level statement runs on its own, like the original's interactive interpreter, so
an exception stops only its statement. Output is cut at 2,000 characters (`...\\n[Output Truncated]`);
no output gives `Executed Successfully with No Output, Did you forget to print?`; a newline is
appended. Syntax errors are reported without `Traceback`/`File` lines. `exit()`, `quit()`,
`sys.exit()` and `input()` are refused with a message. A run longer than `timeout` (5 s) kills
the interpreter and everything it started and starts a fresh one (`restarted=True`); the message
says that all state was lost. A crash of the interpreter (e.g. `os._exit`, segfault, CPU limit)
restarts it the same way.

Confinement (see `SandboxLimits`): the code runs in a process forked from a zygote that was started
with a scrubbed environment (no variable of the worker reaches it) and that imported numpy/sympy.
Per interpreter: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC, no core
files, `no_new_privs`, its own temporary working directory, an audit hook that refuses sockets
(other than the host's own unix socketpairs), `import envs`/`densepolicy` unavailable.
When the worker runs as root (containers, CI): the zygote lives in its own mount, network and IPC
namespaces (no network interface at all; the whole file system is read-only except a private
tmpfs /tmp, /var/tmp and /dev/shm), and each sandbox lineage (an interpreter and its forks) runs
under its own unprivileged uid, so RLIMIT_NPROC contains fork bombs and the code can neither
signal nor read the worker. Code imports (read-only) whatever the worker's interpreter can: its
import paths are bind-mounted where those uids can read them, also from a home folder of mode 0700
or the hidden temp folder (`_ImportView`). As an ordinary user: network and user namespaces when
the kernel allows them (else the audit hook only), RLIMIT_NPROC = current user process count + the
limit, and the worker marks itself non-dumpable so same-user code cannot read its memory or environment.
`DENSEPOLICY_SANDBOX_NO_NAMESPACES=1` (in the worker's environment) skips all namespaces.

Tools: `Sandbox(tools=[names], tool_handler=fn)` binds a stub per name in the interpreter; a call
sends `(name, args, kwargs)` (JSON values only) to the parent, where `fn(name, args, kwargs)` runs in
the trusted process and its result (str or None) is returned to the code. The code never sees the
env objects; the parent refuses names that are not in `tools`.
"""
from __future__ import annotations

import ast
import atexit
import ctypes
import os
import random
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from envs.forkable import CallTimeout, ForkServer, RemoteDied, RemoteError, host_callback, uids_in_use

OUTPUT_LIMIT = 2000
TRUNCATION_MARK = "...\n[Output Truncated]"
NO_OUTPUT = "Executed Successfully with No Output, Did you forget to print?"
EXIT_REFUSED = "Error: exit(), quit() and sys.exit() are not allowed; the interpreter keeps running."
INPUT_REFUSED = "Error: input() is not allowed; there is no standard input."
DEFAULT_PRELOAD = ("math", "fractions", "itertools", "collections", "statistics", "decimal", "re",
                   "numpy", "sympy", "math_verify")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one interpreter process (and what it starts)."""

    memory_mb: int = 4096          # RLIMIT_AS per process (the original used 4 GiB)
    cpu_seconds: int = 300         # RLIMIT_CPU per process, over the interpreter's lifetime
    file_size_mb: int = 64         # RLIMIT_FSIZE: largest file the code can write
    open_files: int = 256          # RLIMIT_NOFILE
    processes: int = 512           # RLIMIT_NPROC for a lineage (an interpreter, its forks and children)
    tmpfs_mb: int = 1024           # size of the private /tmp when running as root


@dataclass(frozen=True)
class ExecResult:
    """What one `Sandbox.run` produced."""

    output: str
    timed_out: bool = False
    restarted: bool = False
    run_seconds: float = 0.0   # time the code itself ran inside the interpreter


def format_observation(raw: str, truncated: bool = False) -> str:
    """Observation text from raw interpreter output (trailing whitespace dropped, cut, newline)."""
    text = raw.rstrip()
    if truncated or len(text) > OUTPUT_LIMIT:
        text = text[:OUTPUT_LIMIT] + TRUNCATION_MARK
    if not text.strip():
        text = NO_OUTPUT
    return text + "\n"


def check_code(code: str) -> str | None:
    """A refusal message for code that cannot run (syntax error, exit, input), else None."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return _syntax_error_text(exc)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("exit", "quit"):
            return EXIT_REFUSED
        if name == "input":
            return INPUT_REFUSED
    return None


def _syntax_error_text(exc: SyntaxError) -> str:
    import traceback
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(line for line in lines if not line.lstrip().startswith(("File ", "Traceback")))


# ============================================================================ caller side
_SERVERS: dict[tuple, ForkServer] = {}
_SERVERS_LOCK = threading.Lock()
_IS_ROOT = os.geteuid() == 0


def _scrubbed_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1"}


def shared_fork_server(preload: tuple[str, ...] = DEFAULT_PRELOAD, tmpfs_mb: int = 1024) -> ForkServer:
    """The process-wide confined zygote for `preload` (started on first use). Hosts spawned from
    it should call `confine_process` first (the grading worker of `envs.math_grading` does)."""
    return _server(tuple(preload), tmpfs_mb)


def new_lineage_uid() -> int | None:
    """A fresh unprivileged uid for a new sandbox lineage (None when not running as root): random, and
    owned by no running process, since a lineage's clean-up kills every process of its uid
    (`envs.forkable.kill_user_processes`) and its RLIMIT_NPROC counts them."""
    if not _IS_ROOT:
        return None
    in_use = uids_in_use()
    rng = random.SystemRandom()
    while True:
        uid = rng.randrange(1 << 20, 1 << 30)
        if uid not in in_use:
            return uid


def _server(preload: tuple[str, ...], tmpfs_mb: int) -> ForkServer:
    key = (preload, tmpfs_mb)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is not None and server._proc.poll() is None:
            return server
        if not _IS_ROOT:  # keep same-user sandbox code out of the worker's memory and environment
            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
        env = _scrubbed_env()
        env["DENSEPOLICY_SANDBOX_PRELOAD"] = ",".join(preload)
        env["DENSEPOLICY_SANDBOX_TMPFS_MB"] = str(tmpfs_mb)
        if os.environ.get("DENSEPOLICY_SANDBOX_NO_NAMESPACES"):  # debugging / kernels that misbehave
            env["DENSEPOLICY_SANDBOX_NO_NAMESPACES"] = "1"
        server = ForkServer(env=env, codec="json", zygote_setup="envs.sandbox:_zygote_setup", name="sandbox",
                            max_message_bytes=1 << 20)
        _SERVERS[key] = server
        return server


def _forget_servers_in_child() -> None:
    """A process forked from the worker must not share the worker's zygote connections."""
    global _SERVERS_LOCK
    _SERVERS.clear()
    _SERVERS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_servers_in_child)


@atexit.register
def shutdown_sandboxes() -> None:
    """Stop every sandbox zygote of this process (and all interpreters)."""
    with _SERVERS_LOCK:
        for server in _SERVERS.values():
            server.close()
        _SERVERS.clear()


class Sandbox:
    """A persistent confined interpreter (see the module docstring). Not thread-safe."""

    def __init__(self, tools: list[str] | tuple[str, ...] = (),
                 tool_handler: Callable[[str, list, dict], Any] | None = None,
                 limits: SandboxLimits = SandboxLimits(), preload: tuple[str, ...] = DEFAULT_PRELOAD,
                 eager: bool = True, _remote: Any = None):
        if tools and tool_handler is None:
            raise ValueError("tools need a tool_handler")
        self.tools = tuple(tools)
        self.tool_handler = tool_handler
        self.limits = limits
        self.preload = tuple(preload)
        self.restarts = 0
        self._remote = _remote
        self._closed = False
        if self._remote is None and eager:
            self._start()

    # -- process management ----------------------------------------------------------
    def _start(self) -> None:
        server = _server(self.preload, self.limits.tmpfs_mb)
        uid = new_lineage_uid()
        self._remote = server.spawn("envs.sandbox:_Interpreter", list(self.tools), asdict(self.limits), uid,
                                    callback=self._on_tool_call, timeout=60)

    def _on_tool_call(self, name: str, args: list, kwargs: dict) -> Any:
        if name not in self.tools or self.tool_handler is None:
            raise NameError(f"unknown tool {name!r}")
        result = self.tool_handler(name, args, kwargs)
        return None if result is None else str(result)

    @property
    def pid(self) -> int | None:
        """Process id of the interpreter (None before the first run of a lazy sandbox)."""
        return None if self._remote is None else self._remote.pid

    def run(self, code: str, timeout: float = 5.0) -> ExecResult:
        """Run `code` in the persistent interpreter; never raises for anything the code does."""
        if self._closed:
            raise RuntimeError("sandbox is closed")
        refusal = check_code(code)
        if refusal is not None:
            return ExecResult(format_observation(refusal))
        if self._remote is None:
            self._start()
        try:
            reply = self._remote.call("run", code, timeout=timeout)
            if not isinstance(reply, dict):
                raise RemoteDied("malformed reply")
            seconds = reply.get("seconds")
            return ExecResult(format_observation(str(reply.get("output", "")), bool(reply.get("truncated"))),
                              run_seconds=float(seconds) if isinstance(seconds, (int, float)) else 0.0)
        except CallTimeout:
            self._restart()
            return ExecResult(format_observation(
                f"TimeoutError: Timed out after {timeout:g} seconds. The interpreter was restarted: "
                "all variables, imports and definitions were lost."), timed_out=True, restarted=True)
        except (RemoteDied, RemoteError) as exc:
            self._restart()
            return ExecResult(format_observation(
                f"Error: the interpreter stopped ({type(exc).__name__}). It was restarted: all variables, "
                "imports and definitions were lost."), restarted=True)

    def _restart(self) -> None:
        if self._remote is not None:
            self._remote.close()
        self.restarts += 1
        self._remote = None
        self._start()

    def fork(self, tool_handler: Callable[[str, list, dict], Any] | None = None) -> Sandbox:
        """An independent sandbox continuing from this interpreter's state (its files are copied).

        `tool_handler` replaces the parent's handler in the copy (a forked env needs its own)."""
        if self._closed:
            raise RuntimeError("sandbox is closed")
        handler = tool_handler or self.tool_handler
        child = Sandbox(self.tools, handler, self.limits, self.preload, eager=False)
        if self._remote is not None:
            try:
                remote = self._remote.fork()
            except (RemoteDied, RemoteError, CallTimeout):
                self._restart()  # broken interpreter: both continue from a fresh one
                remote = None
            if remote is not None:
                remote.callback = child._on_tool_call
                child._remote = remote
        if child._remote is None:
            child._start()
        return child

    def close(self) -> None:
        """Kill the interpreter and every process it started. Idempotent."""
        self._closed = True
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ============================================================================ zygote side
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNS, _CLONE_NEWNET, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x40000000, 0x08000000, 0x10000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_SANDBOX_ROOT = "/tmp/densepolicy-sandboxes"
_PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # a private tmpfs each, when running as root
_ISOLATION: list[str] = []


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> bool:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    return _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0


def _must_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if not _mount(source, target, fstype, flags, data):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _import_paths() -> list[str]:
    """Everything this interpreter may load code from: sys.path (the worker's, the checkout included),
    the venv and base prefixes, the executable's folder; absolute and symlink-free forms, parents first."""
    raw = [p for p in sys.path if p] + [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    if sys.executable:
        raw += [os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))]
    # A package folder may be a symlink to somewhere else (a venv that links another venv's packages,
    # pip --target trees): its target must be exposed too, or the link dangles inside the sandbox.
    for path in [p for p in sys.path if p and os.path.isdir(p)]:
        try:
            with os.scandir(path) as it:
                raw += [os.path.realpath(e.path) for e in it if e.is_symlink()]
        except OSError:
            pass
    paths: list[str] = []
    for path in raw:
        for form in (os.path.abspath(path), os.path.realpath(path)):
            if form not in paths and os.path.exists(form):
                paths.append(form)
    return sorted(paths, key=lambda p: (p.count("/"), p))


def _readable_by_others(path: str) -> bool:
    """Can a uid that owns nothing and has no groups (a lineage uid) read `path` here?"""
    parts = (path.rstrip("/") or "/").split("/")
    try:
        for i in range(1, len(parts)):
            if not os.stat("/".join(parts[:i]) or "/").st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(path).st_mode
    except OSError:
        return False
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & need == need


class _ImportView:
    """Makes the interpreter's import paths (`_import_paths`) readable, read-only, for lineage uids in
    the zygote's mount namespace, at their usual paths.

    Lineages run under uids that own nothing, so a venv or interpreter below a folder of mode 0700 (pyenv
    or conda under /root) cannot be read, and the private tmpfs over /tmp hides a checkout cloned there.
    Bind mounts fix both without touching the host: folders above a path that others cannot traverse
    are covered by a small tmpfs of mode 0755 (or recreated in the private /tmp) holding only the path,
    onto which the original is bind-mounted read-only; a path that is itself closed (mode 0700) gets such
    a folder with each of its entries bind-mounted. The originals are opened (O_PATH) before anything is
    hidden, so this works from a read-only file system too. Files inside must be readable by others (any
    umask like 022); file permissions are never widened. Alternatives were rejected: a supplementary
    group opens nothing of mode 0700, file descriptors opened before the uid switch do not survive code
    that closes them nor reach packages imported later by path, and chmod would change the host."""

    def __init__(self, paths: list[str], private: list[str]):
        self.private = [os.path.realpath(p) for p in private]
        self.plan: list[tuple[str, int, bool, list[tuple[str, str, Any]] | None]] = []
        for path in paths:
            if not self._hidden(path) and _readable_by_others(path):
                continue
            try:
                fd = os.open(path, os.O_PATH)
                mode = os.fstat(fd).st_mode
            except OSError:
                continue
            entries = None
            if stat.S_ISDIR(mode) and mode & 0o005 != 0o005:
                entries = self._entries(path)
            self.plan.append((path, fd, stat.S_ISDIR(mode), entries))
        self.masks: list[str] = []

    def _hidden(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.private)

    @staticmethod
    def _entries(path: str) -> list[tuple[str, str, Any]]:
        """(name, kind, O_PATH fd or link text) of each entry of a closed folder."""
        out: list[tuple[str, str, Any]] = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_symlink():
                        out.append((entry.name, "link", os.readlink(entry.path)))
                    elif entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
                        kind = "dir" if entry.is_dir(follow_symlinks=False) else "file"
                        out.append((entry.name, kind, os.open(entry.path, os.O_PATH | os.O_NOFOLLOW)))
        except OSError:
            pass
        return out

    def apply(self) -> None:
        """Run after the private tmpfs mounts; paths that cannot be exposed stay as they are."""
        for path, fd, is_dir, entries in self.plan:
            try:
                if not _readable_by_others(path):  # else a parent's mount already exposes it
                    self._expose(path, fd, is_dir, entries)
            except OSError:
                pass  # reported by _warn_unreadable
        for _path, fd, _is_dir, entries in self.plan:
            os.close(fd)
            for _name, kind, ref in entries or ():
                if kind != "link":
                    os.close(ref)
        for mask in self.masks:
            _mount(None, mask, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None)

    def _expose(self, path: str, fd: int, is_dir: bool, entries: list[tuple[str, str, Any]] | None) -> None:
        parts = path.split("/")
        for i in range(2, len(parts)):
            self._make_traversable("/".join(parts[:i]))
        if entries is None:
            self._bind(fd, path, is_dir)
            return
        if os.path.lexists(path):
            self._mask(path)
        else:
            self._mkdir(path)
        for name, kind, ref in entries:
            target = os.path.join(path, name)
            if kind == "link":
                os.symlink(ref, target)
            else:
                self._bind(ref, target, kind == "dir")

    def _make_traversable(self, folder: str) -> None:
        try:
            mode = os.stat(folder).st_mode
        except FileNotFoundError:  # hidden by a tmpfs: recreate it there
            self._mkdir(folder)
            return
        if not mode & stat.S_IXOTH:
            self._mask(folder)

    def _mask(self, folder: str) -> None:
        _must_mount("tmpfs", folder, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        self.masks.append(folder)

    @staticmethod
    def _mkdir(folder: str) -> None:
        os.mkdir(folder, 0o755)
        os.chmod(folder, 0o755)  # whatever the umask

    def _bind(self, fd: int, target: str, is_dir: bool) -> None:
        if not os.path.lexists(target):
            if is_dir:
                self._mkdir(target)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
        _must_mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC, None)
        _must_mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None)


def _warn_unreadable(paths: list[str]) -> None:
    """Say which import paths the lineage uids still cannot read (e.g. no mount namespace: a container
    without CAP_SYS_ADMIN, or DENSEPOLICY_SANDBOX_NO_NAMESPACES), since imports from them will fail."""
    closed = [p for p in paths if not _readable_by_others(p)]
    if closed:
        print(f"densepolicy sandbox: model code cannot read {', '.join(closed)} (closed to other users"
              f"{'' if 'readonly-fs' in _ISOLATION else ' and no private mount namespace'}); "
              "imports from there fail inside the sandbox", file=sys.stderr, flush=True)


def _zygote_setup() -> None:
    """Runs once in the sandbox zygote: preload modules, then namespaces (best effort)."""
    import importlib
    global _SANDBOX_ROOT
    for module in filter(None, os.environ.pop("DENSEPOLICY_SANDBOX_PRELOAD", "").split(",")):
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - optional speed-up only
            pass
    import shutil  # noqa: F401 - used after fork, while the file system is read-only
    import tempfile
    import traceback  # noqa: F401
    tmpfs_mb = int(os.environ.pop("DENSEPOLICY_SANDBOX_TMPFS_MB", "1024"))
    use_namespaces = not os.environ.pop("DENSEPOLICY_SANDBOX_NO_NAMESPACES", "")
    if use_namespaces and _IS_ROOT and _libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC) == 0:
        _ISOLATION.append("netns")
        if _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None):
            private = [p for p in _PRIVATE_TMP if os.path.isdir(p)]
            view = _ImportView(_import_paths(), private)  # opened before anything is hidden
            with open("/proc/self/mountinfo") as f:
                points = [line.split()[4] for line in f]
            for point in sorted(set(points), key=len):
                _mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None)
            for point in private:
                _mount("tmpfs", point, "tmpfs", 0, f"size={tmpfs_mb}m,mode=1777")
            view.apply()
            _ISOLATION.append("readonly-fs")
    elif use_namespaces and not _IS_ROOT and _probe(_enter_user_and_net_namespaces):  # kernels may refuse
        _enter_user_and_net_namespaces()
        _ISOLATION.append("netns")
    if not _IS_ROOT:
        _SANDBOX_ROOT = os.path.join(tempfile.gettempdir(), f"densepolicy-sandbox-{os.getpid()}")
    os.makedirs(_SANDBOX_ROOT, exist_ok=True)
    os.chmod(_SANDBOX_ROOT, 0o1777 if _IS_ROOT else 0o700)  # root: lineages have their own uids
    _ISOLATION.append("root" if _IS_ROOT else "user")
    if _IS_ROOT:
        _warn_unreadable(_import_paths())


def _enter_user_and_net_namespaces() -> None:
    """Unprivileged: a user namespace mapping our own uid/gid, a network namespace, no capabilities."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1")):
        with open(path, "w") as f:
            f.write(text)
    _drop_capabilities()


def _probe(step: Callable[[], None]) -> bool:
    """Does `step` work? Tried in a throw-away child, so a half-done namespace set-up cannot stick."""
    import tempfile
    pid = os.fork()
    if pid == 0:
        try:
            step()
            tempfile.TemporaryDirectory().cleanup()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _drop_capabilities() -> None:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    _libc.capset(ctypes.byref(header), ctypes.byref(data))


def _sweep_dead_dirs() -> None:
    """Remove working directories of interpreters that no longer exist."""
    import shutil
    try:
        entries = os.listdir(_SANDBOX_ROOT)
    except OSError:
        return
    for name in entries:
        if not name.startswith("sb-"):
            continue
        try:
            os.kill(int(name.split("-")[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(_SANDBOX_ROOT, name), ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


# ============================================================================ confinement
def confine_process(limits: dict[str, int], uid: int | None,
                    before_drop: Callable[[], None] | None = None) -> None:
    """Confine the current (freshly forked, still privileged) process: own working directory,
    rlimits, no_new_privs, subreaper, unprivileged uid (when root), scrubbed environment,
    stdin from /dev/null. `before_drop` runs in the working directory before privileges drop."""
    import resource
    import tempfile
    _sweep_dead_dirs()
    path = tempfile.mkdtemp(prefix=f"sb-{os.getpid()}-", dir=_SANDBOX_ROOT)
    if uid is not None:
        os.chown(path, uid, uid)
    os.chdir(path)
    if before_drop is not None:
        before_drop()
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    mb = 1024 * 1024
    nproc = limits["processes"] + (_count_user_processes() if uid is None else 0)
    for res, value in ((resource.RLIMIT_AS, limits["memory_mb"] * mb),
                       (resource.RLIMIT_CPU, limits["cpu_seconds"]),
                       (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb),
                       (resource.RLIMIT_NOFILE, limits["open_files"]),
                       (resource.RLIMIT_NPROC, nproc),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    _libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    _libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: detached descendants stay ours to kill
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.environ.clear()
    os.environ.update(_scrubbed_env())
    os.environ["HOME"] = path


def _hide_project_modules() -> None:
    """Make `import envs` / `densepolicy` / `agents` fail inside the sandbox."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != root]
    for name in list(sys.modules):
        if name.split(".")[0] in ("envs", "densepolicy", "agents", "tests"):
            del sys.modules[name]
    # an editable install maps the project packages with a meta-path finder of its own
    sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
    sys.path_importer_cache.clear()


# ============================================================================ interpreter side
class _CappedWriter:
    """sys.stdout / sys.stderr replacement: unbuffered writes to fd 1, dropped past the cap."""

    def __init__(self, cap: int):
        self.cap = cap
        self.written = 0
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self.written < self.cap:
            data = text[: self.cap - self.written].encode("utf-8", "replace")
            os.write(1, data)
        self.written += len(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1

    def writable(self) -> bool:
        return True


class _Interpreter:
    """Lives in the sandbox process: confines it at construction, then runs code on request."""

    def __init__(self, tools: list[str], limits: dict[str, int], uid: int | None):
        import builtins
        self._cap = OUTPUT_LIMIT * 2
        confine_process(limits, uid, before_drop=self._redirect_output)
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        for name in tools:
            self.namespace[name] = _tool_stub(name)
        self._uid = uid
        sys.addaudithook(_audit)
        _hide_project_modules()
        builtins.exit = builtins.quit = _refuse_exit
        builtins.input = _refuse_input

    def _redirect_output(self) -> None:
        """fd 1 and 2 -> an unlinked append-only file, so child processes' output is captured too."""
        path = os.path.join(os.getcwd(), ".out")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        os.unlink(path)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self._writer = _CappedWriter(self._cap)
        sys.stdout = sys.stderr = self._writer

    def _before_fork(self) -> None:
        random = sys.modules.get("random")
        self._random_state = random.getstate() if random is not None else None

    def _after_fork(self) -> None:
        """In a fork: the same `random` state (os.fork reseeds it), a copy of the working directory
        and a fresh output file."""
        import shutil
        random = sys.modules.get("random")
        if random is not None and self._random_state is not None:
            random.setstate(self._random_state)
        old = os.getcwd()
        path = os.path.join(_SANDBOX_ROOT, f"sb-{os.getpid()}-fork")
        shutil.copytree(old, path, symlinks=True)
        os.chdir(path)
        os.environ["HOME"] = path
        self._redirect_output()

    def info(self) -> dict[str, Any]:
        """How this interpreter is confined (for tests and logs)."""
        return {"isolation": list(_ISOLATION), "uid": os.getuid(), "cwd": os.getcwd(), "pid": os.getpid()}

    def run(self, code: str) -> dict[str, Any]:
        """Run each top-level statement like `python -i` would; return the captured output."""
        import time
        started = time.perf_counter()
        os.ftruncate(1, 0)
        self._writer.written = 0
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            self._writer.write(_syntax_error_text(exc))
            tree = None
        for stmt in tree.body if tree is not None else ():
            try:
                compiled = compile(ast.Interactive(body=[stmt], type_ignores=[]), "<stdin>", "single")
                exec(compiled, self.namespace)
            except SystemExit:
                self._writer.write(EXIT_REFUSED + "\n")
            except BaseException as exc:  # noqa: BLE001 - shown to the model like the REPL would
                self._writer.write(_format_exception(exc))
        size = os.fstat(1).st_size
        data = os.pread(1, self._cap * 4, 0)
        return {"output": data.decode("utf-8", "replace"), "seconds": time.perf_counter() - started,
                "truncated": size > len(data) or self._writer.written > self._cap}


def _format_exception(exc: BaseException) -> str:
    """The traceback the REPL would print, without the sandbox's own frames."""
    import traceback
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, limit=-20)
    internal = (os.path.abspath(__file__), os.path.join(os.path.dirname(os.path.abspath(__file__)), "forkable.py"))
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename not in internal])
    return "".join(te.format())


def _count_user_processes() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _refuse_exit(*_: Any, **__: Any) -> None:
    print(EXIT_REFUSED)


def _refuse_input(*_: Any, **__: Any) -> str:
    raise RuntimeError(INPUT_REFUSED)


_AF_UNIX = 1


def _audit(event: str, args: tuple) -> None:
    if event == "socket.__new__" and args[1] not in (_AF_UNIX, -1):
        raise PermissionError("network access is disabled in the sandbox")
    if event in ("socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
                 "socket.gethostbyaddr", "socket.sendto"):
        raise PermissionError("network access is disabled in the sandbox")


def _tool_stub(name: str) -> Callable[..., Any]:
    def stub(*args: Any, **kwargs: Any) -> Any:
        return host_callback(name, *args, **kwargs)

    stub.__name__ = stub.__qualname__ = name
    return stub
