"""envs.sandbox: semantics of the persistent interpreter, fork, and hostile code (real processes)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from envs.sandbox import (
    EXIT_REFUSED,
    INPUT_REFUSED,
    NO_OUTPUT,
    OUTPUT_LIMIT,
    TRUNCATION_MARK,
    Sandbox,
)

IS_ROOT = os.geteuid() == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def sb():
    s = Sandbox()
    yield s
    s.close()


def _info(sandbox: Sandbox) -> dict:
    return sandbox._remote.call("info", timeout=10)


# ----------------------------------------------------------------------------- semantics
def test_persistence_across_calls(sb):
    assert sb.run("x = 20\ndef f(y):\n    return x + y\nimport math").output == NO_OUTPUT + "\n"
    assert sb.run("print(f(2), math.sqrt(16))").output == "22 4.0\n"


def test_bare_expressions_echo_like_repl(sb):
    assert sb.run("1 + 1").output == "2\n"
    assert sb.run("None").output == NO_OUTPUT + "\n"


def test_stdout_and_stderr_in_order_without_prompts(sb):
    out = sb.run("import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')\n"
                 "import os\nos.system('echo d')").output
    assert out.startswith("a\nb\nc\nd\n")
    assert ">>>" not in out


def test_error_stops_only_its_statement(sb):
    out = sb.run("print(undefined_name)\nprint('after')").output
    assert "NameError: name 'undefined_name' is not defined" in out
    assert out.rstrip().endswith("after")
    assert "sandbox.py" not in out and "forkable.py" not in out


def test_syntax_error_is_short(sb):
    out = sb.run("def f(:\n  pass").output
    assert "SyntaxError" in out
    assert "Traceback" not in out and 'File "' not in out


def test_exit_and_input_are_refused(sb):
    assert sb.run("exit()").output == EXIT_REFUSED + "\n"
    assert sb.run("import sys\nsys.exit(3)").output == EXIT_REFUSED + "\n"
    assert sb.run("x = input('name?')").output == INPUT_REFUSED + "\n"
    # disguised forms fail at run time and the interpreter survives
    assert EXIT_REFUSED in sb.run("raise SystemExit(1)").output
    assert INPUT_REFUSED in sb.run("import builtins\ngetattr(builtins, 'in' + 'put')()").output
    sb.run("y = 5")
    assert sb.run("print(y)").output == "5\n"


def test_huge_output_is_truncated(sb):
    out = sb.run("print('x' * 10_000_000)").output
    assert out == "x" * OUTPUT_LIMIT + TRUNCATION_MARK + "\n"
    out = sb.run("for i in range(200000):\n    print(i)").output
    assert out.endswith(TRUNCATION_MARK + "\n") and len(out) <= OUTPUT_LIMIT + len(TRUNCATION_MARK) + 1
    out = sb.run("import os\nos.system('yes | head -c 5000000')").output  # from a child process
    assert out.endswith(TRUNCATION_MARK + "\n")


def test_timeout_restarts_with_state_lost(sb):
    sb.run("kept = 1")
    t0 = time.monotonic()
    r = sb.run("while True:\n    pass", timeout=1.0)
    assert time.monotonic() - t0 < 5
    assert r.timed_out and r.restarted
    assert "Timed out" in r.output and "lost" in r.output
    assert "NameError" in sb.run("print(kept)").output
    assert sb.run("print(3)").output == "3\n"


def test_fork_is_independent_and_matches_replay():
    actions = ["import random\nrandom.seed(7)\nxs = [random.random() for _ in range(3)]",
               "open('notes.txt', 'w').write('v1')\ntotal = sum(xs)"]
    following = ["xs.append(random.random())\nprint(xs[-1], total)",
                 "print(open('notes.txt').read(), len(xs))",
                 "import os\nprint(sorted(os.listdir('.')))"]
    original = Sandbox()
    for a in actions:
        original.run(a)
    forked = original.fork()
    replayed = Sandbox()
    for a in actions:
        replayed.run(a)
    try:
        assert forked.pid != original.pid
        outs_fork = [forked.run(a).output for a in following]
        outs_replay = [replayed.run(a).output for a in following]
        assert outs_fork == outs_replay
        # the original is untouched by what the fork did (memory and files)
        forked.run("open('notes.txt', 'w').write('changed')\nxs.clear()")
        assert original.run("print(open('notes.txt').read(), len(xs))").output == "v1 3\n"
        # closing the parent leaves the fork alive
        original.close()
        assert forked.run("print(len(xs))").output == "0\n"
    finally:
        original.close(), forked.close(), replayed.close()


def test_working_directories_are_private(sb):
    other = Sandbox()
    try:
        cwd_a, cwd_b = _info(sb)["cwd"], _info(other)["cwd"]
        assert cwd_a != cwd_b
        out = sb.run(f"import os\nprint(os.listdir({cwd_b!r}))").output
        if IS_ROOT:  # separate uids: the other lineage's directory is closed to us
            assert "PermissionError" in out
    finally:
        other.close()


def test_tools_call_trusted_handler():
    calls = []

    def handler(name, args, kwargs):
        calls.append((name, args, kwargs, os.getpid()))
        return f"you went to {args[0]}"

    s = Sandbox(tools=["goto"], tool_handler=handler)
    try:
        assert s.run("print(goto('desk 1'))").output == "you went to desk 1\n"
        assert calls == [("goto", ["desk 1"], {}, os.getpid())]
        assert "NameError" in s.run("take('x')").output  # only the listed tools exist
        with pytest.raises(NameError):
            s._on_tool_call("take", ["x"], {})  # a forged request for another name is refused
        child_calls = []
        child = s.fork(tool_handler=lambda n, a, k: child_calls.append(a) or "child")
        assert child.run("print(goto('sofa'))").output == "child\n"
        assert child_calls == [["sofa"]] and len(calls) == 1
        child.close()
    finally:
        s.close()


# ----------------------------------------------------------------------------- hostile code
def test_env_vars_of_worker_not_visible(monkeypatch):
    monkeypatch.setenv("DENSEPOLICY_TEST_SECRET", "hunter2-secret")
    s = Sandbox()
    try:
        out = s.run("import os\nprint(dict(os.environ))").output
        assert "hunter2" not in out
        for path in (f"/proc/{os.getpid()}/environ", f"/proc/{s._remote.server.pid}/environ",
                     "/proc/1/environ"):
            out = s.run(f"print(open({path!r}, 'rb').read())").output
            assert "hunter2" not in out
    finally:
        s.close()


def test_cannot_read_worker_memory(sb):
    out = sb.run(f"if True:\n    f = open('/proc/{os.getpid()}/mem', 'rb')\n    print('opened')").output
    assert "opened" not in out
    assert "Error" in out


def test_cannot_import_project_packages(sb):
    for module in ("envs", "envs.math_env", "densepolicy", "agents"):
        assert "ModuleNotFoundError" in sb.run(f"import {module}").output
    # the caller's objects are in another process: nothing of them is reachable
    out = sb.run("import gc\nprint([type(o).__name__ for o in gc.get_objects() "
                 "if 'Episode' in type(o).__name__ or 'Env' == type(o).__name__[-3:]])").output
    assert out == "[]\n"


def test_cannot_kill_worker_or_zygote(sb):
    zygote = sb._remote.server.pid
    out = sb.run(f"import os, signal\nfor pid in ({os.getpid()}, {zygote}, os.getppid()):\n"
                 "    try:\n        os.kill(pid, signal.SIGKILL)\n    except Exception as e:\n"
                 "        print(type(e).__name__)").output
    assert _alive(zygote)
    if IS_ROOT:
        assert out.count("PermissionError") >= 2
    assert sb.run("print('still here')").output == "still here\n"


@pytest.mark.serial  # thousands of forks for 2 s: timing-sensitive tests beside it would time out
def test_fork_bomb_is_contained(sb):
    uid = _info(sb)["uid"]
    r = sb.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", timeout=2.0)
    assert r.timed_out and r.restarted
    time.sleep(0.3)
    if IS_ROOT:
        leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _owned_by(p, uid)]
        assert leftovers == []
    assert sb.run("print('ok')").output == "ok\n"


@pytest.mark.serial
def test_fork_bomb_in_a_fork_spares_the_live_parent(sb):
    """The copy shares its parent's uid: its bomb is killed with the uid frozen, the parent lives on."""
    sb.run("x = 41")
    child = sb.fork()
    try:
        uid = _info(child)["uid"]
        r = child.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                      timeout=2.0)
        assert r.timed_out and r.restarted
        time.sleep(0.3)
        if IS_ROOT:
            leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _owned_by(p, uid)]
            assert leftovers == [str(sb.pid)]  # the parent interpreter, and nothing the bomb started
        assert sb.run("print(x + 1)").output == "42\n"
        assert child.run("print('fresh' if 'x' not in dir() else 'stale')").output == "fresh\n"
    finally:
        child.close()


def _owned_by(pid: str, uid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid and _alive(int(pid))
    except OSError:
        return False


def test_memory_limit(sb):
    out = sb.run("x = bytearray(10 * 1024**3)").output
    assert "MemoryError" in out
    assert sb.run("print(1)").output == "1\n"


def test_cannot_raise_limits_or_uid(sb):
    out = sb.run("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))").output
    assert "Error" in out
    if IS_ROOT:
        assert "PermissionError" in sb.run("import os\nos.setuid(0)").output


def test_cannot_write_outside_its_directory(sb, tmp_path):
    target = tmp_path / "escape.txt"
    out = sb.run(f"open({str(target)!r}, 'w').write('x')").output
    assert not target.exists()
    assert "Error" in out
    probe = "/tmp/densepolicy-sandbox-probe.txt"
    sb.run(f"open({probe!r}, 'w').write('x')")
    if "readonly-fs" in _info(sb)["isolation"]:  # /tmp of the sandbox is a private tmpfs
        assert not os.path.exists(probe)
    elif os.path.exists(probe):
        os.unlink(probe)


def test_file_size_limit(sb):
    out = sb.run("f = open('big', 'wb')\nf.write(b'0' * (200 * 1024 * 1024))").output
    assert "Error" in out or "File too large" in out
    assert sb.run("print(2)").output == "2\n"


def test_network_is_blocked(sb):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        out = sb.run(f"import socket\nif True:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                     "    print('connected')").output
        assert "connected" not in out
        info = _info(sb)
        if "netns" in info["isolation"]:  # even raw syscalls through ctypes find no network
            code = ("import ctypes, struct\nlibc = ctypes.CDLL(None)\nfd = libc.socket(2, 1, 0)\n"
                    f"addr = struct.pack('!HH4s8x', 2, {port}, bytes([127, 0, 0, 1]))\n"
                    "addr = struct.pack('H', 2) + addr[2:]\n"
                    "print('rc', libc.connect(fd, addr, len(addr)))")
            out = sb.run(code).output
            assert "rc 0" not in out
        time.sleep(0.2)
        assert accepted == []
    finally:
        server.close()


def test_fd_exhaustion_is_contained(sb):
    out = sb.run("fs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\n"
                 "except OSError as e:\n    print('stopped', len(fs) < 1000)").output
    assert "stopped True" in out
    sb.run("for f in fs:\n    f.close()\ndel fs")
    assert sb.run("print('fine')").output == "fine\n"


def test_detached_processes_die_on_close():
    s = Sandbox()
    out = s.run(
        "import subprocess, os, ctypes, time\n"
        "a = subprocess.Popen(['sleep', '1000'], start_new_session=True).pid\n"
        "_ = ctypes.CDLL(None).prctl(36, 0, 0, 0, 0)\n"  # give up being a subreaper, then double-fork
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(1000)\n"
        "    _ = os.write(w, str(pid).encode())\n"
        "    os._exit(0)\n"
        "b = int(os.read(r, 32))\n"
        "print(a, b)").output
    assert len(out.split()) == 2, out
    a, b = map(int, out.split())
    time.sleep(0.2)
    assert _alive(a) and _alive(b)
    s.close()
    time.sleep(0.3)
    assert not _alive(a) and not _alive(b)


def test_signal_tampering_does_not_prevent_timeout_or_close(sb):
    sb.run("import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):\n"
           "    signal.signal(s, signal.SIG_IGN)\n"
           "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})")
    r = sb.run("import time\ntime.sleep(60)", timeout=1.0)
    assert r.timed_out
    pid = sb.pid
    sb.run("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)")
    sb.close()
    time.sleep(0.2)
    assert not _alive(pid)


def test_crash_and_protocol_tampering_restart(sb):
    r = sb.run("import ctypes\nctypes.string_at(0)")  # segfault
    assert r.restarted and "lost" in r.output
    r = sb.run("import os\ngetattr(os, '_ex' + 'it')(0)")
    assert r.restarted
    # write garbage on every socket the interpreter holds (its channel to the worker)
    r = sb.run("import os, stat\nfor fd in map(int, os.listdir('/proc/self/fd')):\n"
               "    try:\n        if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
               "            os.write(fd, b'\\xff\\xff\\xff\\xffgarbage')\n    except OSError:\n        pass")
    assert sb.run("print('recovered')").output.endswith("recovered\n")


def test_overwriting_builtins_stays_inside(sb):
    sb.run("import builtins\nbuiltins.print = lambda *a, **k: None")
    assert sb.run("print('hello')").output == NO_OUTPUT + "\n"
    # breaking builtins the interpreter itself needs only breaks (and restarts) this sandbox
    r = sb.run("import builtins\nbuiltins.len = lambda x: 'correct'\nbuiltins.isinstance = lambda *a: True")
    assert "correct" not in r.output
    fresh = Sandbox()
    try:
        assert fresh.run("print(len([1, 2]))").output == "2\n"
    finally:
        fresh.close()
    assert "correct" not in sb.run("print(len([1]))").output


def test_cannot_touch_other_sandbox(sb):
    other = Sandbox()
    try:
        other.run("secret = 'abc'")
        out = sb.run(f"import os, signal\ntry:\n    os.kill({other.pid}, signal.SIGKILL)\nexcept Exception as e:\n"
                     "    print(type(e).__name__)").output
        if IS_ROOT:
            assert "PermissionError" in out
            assert other.run("print(secret)").output == "abc\n"
    finally:
        other.close()


@pytest.mark.skipif(not IS_ROOT, reason="the worker is not root: nothing privileged to lose")
def test_privileged_operations_fail(sb):
    code = ("import os, ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nresults = []\n"
            "for name, call in [('chroot', lambda: os.chroot('/')), ('setuid0', lambda: os.setuid(0)),\n"
            "                   ('shadow', lambda: open('/etc/shadow').read()),\n"
            "                   ('mount', lambda: libc.mount(b'none', b'/mnt', b'tmpfs', 0, None) or 'mounted'),\n"
            "                   ('unshare', lambda: libc.unshare(0x00020000) or 'unshared'),\n"
            "                   ('ptrace', lambda: libc.ptrace(16, os.getppid(), 0, 0) or 'attached')]:\n"
            "    try:\n        r = call()\n        results.append((name, 'ok' if r not in (-1,) else 'failed'))\n"
            "    except Exception as e:\n        results.append((name, 'failed'))\n"
            "print(results)")
    out = sb.run(code).output
    assert "'ok'" not in out, out
    assert out.count("'failed'") == 6


def test_other_sandbox_memory_is_unreadable(sb):
    other = Sandbox()
    try:
        other.run("secret = 'topsecret-' * 3")
        out = sb.run(f"if True:\n    data = open('/proc/{other.pid}/mem', 'rb')\n    print('opened')").output
        if IS_ROOT:
            assert "opened" not in out
        out = sb.run(f"print(open('/proc/{other.pid}/environ', 'rb').read())").output
        assert "topsecret" not in out
    finally:
        other.close()


def test_forged_fork_reply_cannot_target_other_processes(sb):
    """Code pre-writes a fake fork answer naming the zygote: the worker must not adopt (and later kill) it."""
    zygote = sb._remote.server.pid
    bystander = Sandbox()
    try:
        code = ("import os, stat, json, struct, socket\n"
                "fds = []\n"
                "for f in os.listdir('/proc/self/fd'):\n"
                "    try:\n"
                "        if stat.S_ISSOCK(os.fstat(int(f)).st_mode):\n"
                "            fds.append(int(f))\n"
                "    except OSError:\n"
                "        pass\n"
                "fd = fds[0]\n"
                "s = socket.socket(fileno=os.dup(fd))\n"
                "def frame(obj):\n"
                "    data = json.dumps(obj).encode()\n"
                "    return struct.pack('!I', len(data)) + data\n"
                f"s.sendall(frame({{'ok': True, 'result': {{'output': 'x', 'truncated': False}}}}))\n"
                f"s.sendall(frame({{'ok': True, 'result': {{'pid': {zygote}}}}}))\n"
                "a, b = socket.socketpair()\n"
                "socket.send_fds(s, [b'F'], [a.fileno()])\n")
        sb.run(code)
        try:
            child = sb.fork()
            child.close()
        except Exception:  # noqa: BLE001 - refusing is fine too
            pass
        assert _alive(zygote)
        assert bystander.run("print('alive')").output == "alive\n"
    finally:
        bystander.close()


def test_hostile_messages_to_the_worker_are_contained(sb):
    """Deeply nested or oversized frames on the interpreter's socket restart it; the worker never raises."""
    for payload in ("b'[' * 100000 + b']' * 100000", "b'\"' + b'x' * (4 << 20) + b'\"'"):
        code = ("import os, stat, struct\nfds = []\nfor f in os.listdir('/proc/self/fd'):\n    try:\n"
                "        if stat.S_ISSOCK(os.fstat(int(f)).st_mode):\n            fds.append(int(f))\n"
                "    except OSError:\n        pass\n"
                f"data = {payload}\nos.write(fds[0], struct.pack('!I', len(data)))\n"
                "view = memoryview(data)\nwhile view:\n    view = view[os.write(fds[0], view):]")
        r = sb.run(code, timeout=5.0)
        assert r.restarted
        assert sb.run("print('ok')").output == "ok\n"


def test_concurrent_sandboxes_from_threads():
    """The tree sampler runs, forks and closes many episodes from worker threads at once."""
    errors, pids = [], []

    def worker(k: int) -> None:
        try:
            for _ in range(3):
                s = Sandbox()
                s.run(f"k = {k}")
                child = s.fork()
                s.close()  # closing the parent while other threads fork and close
                out = child.run("print(k * 2)").output
                pids.append(child.pid)
                child.close()
                if out != f"{k * 2}\n":
                    errors.append(out)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


# ----------------------------------------------------------------------------- what model code can import
_CLOSED_DIR_PROBE = """
import json, sys
site, closed, drop, secret = json.loads(sys.argv[1])
sys.path[:0] = [site, closed]
from envs.sandbox import Sandbox
s = Sandbox(preload=())
print(json.dumps([s.run(code).output for code in (
    "import dp_probe\\nimport dp_probe.lazy, dp_closed\\nprint(dp_probe.lazy.VALUE, dp_closed.VALUE)",
    f"open({drop!r}, 'w').write('x')",
    f"print(open({secret!r}).read())")]))
s.close()
"""


def test_imports_from_folders_closed_to_other_users(tmp_path):
    """sys.path entries below a folder of mode 0700 (pyenv/conda under /root), and an entry that is itself
    closed, import in the sandbox, read-only; what else those folders hold stays hidden."""
    from densepolicy.paths import PROJECT_ROOT, cache_dir
    cache_dir().mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="closed-"))  # mode 0700, outside the temp folder
    try:
        package = private / "site" / "dp_probe"
        (package / "drop").mkdir(parents=True)
        (package / "drop").chmod(0o777)  # only the read-only mount keeps code from writing here
        (package / "__init__.py").write_text("")
        (package / "lazy.py").write_text("VALUE = 42\n")
        (private / "closed").mkdir(mode=0o700)
        (private / "closed" / "dp_closed.py").write_text("VALUE = 7\n")
        (private / "secret.txt").write_text("hidden-sibling")
        for path in private.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
        drop, secret = package / "drop" / "x.txt", private / "secret.txt"
        args = json.dumps([str(private / "site"), str(private / "closed"), str(drop), str(secret)])
        result = subprocess.run([sys.executable, "-c", _CLOSED_DIR_PROBE, args], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        imported, wrote, read = json.loads(result.stdout.strip().splitlines()[-1])
        assert imported == "42 7\n"
        if IS_ROOT:  # a lineage uid of its own: it sees the two paths, read-only, and nothing beside them
            assert "Error" in wrote and not drop.exists()
            assert "hidden-sibling" not in read and "Error" in read
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT, reason="an ordinary user's sandbox runs under the user's own uid")
def test_closed_import_paths_without_a_mount_namespace_are_reported(tmp_path):
    """Without a private mount namespace (a container without CAP_SYS_ADMIN, or namespaces turned off) a
    root worker's lineage uids cannot read a closed folder on sys.path: the zygote says so on stderr."""
    from densepolicy.paths import PROJECT_ROOT, cache_dir
    cache_dir().mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="closed-"))
    try:
        (private / "site").mkdir()
        code = ("import sys\nsys.path.insert(0, sys.argv[1])\nfrom envs.sandbox import Sandbox\n"
                "s = Sandbox(preload=())\ns.run('1')\ns.close()")
        env = {**os.environ, "DENSEPOLICY_SANDBOX_NO_NAMESPACES": "1"}
        result = subprocess.run([sys.executable, "-c", code, str(private / "site")], cwd=PROJECT_ROOT, env=env,
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        warning = [line for line in result.stderr.splitlines() if "model code cannot read" in line]
        assert len(warning) == 1 and str(private / "site") in warning[0]
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="lineage uids exist only when the worker runs as root")
def test_a_new_lineage_never_gets_a_uid_a_live_process_has(monkeypatch):
    """A lineage's clean-up kills every process of its uid: a uid already in use (another lineage's, a
    user's) must not be handed out, however the random draw falls."""
    import envs.sandbox as sandbox
    from envs.forkable import uids_in_use

    assert os.getuid() in uids_in_use() and 0 in uids_in_use()  # real uids of live processes
    busy = (1 << 20) + 5  # say another lineage runs under it
    draws = iter([busy, busy, 1 << 21])

    class Scripted:
        def randrange(self, low, high):
            return next(draws)

    monkeypatch.setattr(sandbox.random, "SystemRandom", Scripted)
    monkeypatch.setattr(sandbox, "uids_in_use", lambda: uids_in_use() | {busy})
    assert sandbox.new_lineage_uid() == 1 << 21
