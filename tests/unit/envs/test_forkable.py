"""envs.forkable: hosted objects in their own processes, fork, callbacks, timeouts, cleanup."""
import os
import time

import pytest

from envs.forkable import CallTimeout, ForkServer, RemoteDied, RemoteError, kill_tree_of_user, kill_user_processes


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def server():
    s = ForkServer(name="test")
    yield s
    s.close()


def test_calls_run_in_another_process(server):
    r = server.spawn("tests.harness.forkable_demo:Counter", 5)
    assert r.call("add", 1) == 6
    assert r.call("pid") == r.pid != os.getpid()
    with pytest.raises(RemoteError, match="KeyError"):
        r.call("boom")
    assert r.call("add", 0) == 6  # host survives its own exceptions
    with pytest.raises(RemoteError):
        r.call("_private")
    r.close()


def test_fork_copies_state_and_is_independent(server):
    r = server.spawn("tests.harness.forkable_demo:Counter", 0)
    r.call("add", 3)
    c = r.fork()
    assert c.pid != r.pid
    assert c.call("add", 10) == 13
    assert r.call("add", 1) == 4
    r.close()  # closing the parent does not touch the fork
    assert c.call("add", 1) == 14
    grandchild = c.fork()
    c.close()
    assert grandchild.call("add", 0) == 14


def test_callback_runs_in_caller(server):
    seen = []

    def handler(name, args, kwargs):
        seen.append((name, args, os.getpid()))
        return args[0] * 2

    r = server.spawn("tests.harness.forkable_demo:Counter", callback=handler)
    assert r.call("ask_parent", 21) == 42
    assert seen == [("double", [21], os.getpid())]


def test_timeout_kills_host(server):
    r = server.spawn("tests.harness.forkable_demo:Counter")
    with pytest.raises(CallTimeout):
        r.call("sleep", 30, timeout=0.3)
    assert not r.alive
    time.sleep(0.1)
    assert not _alive(r.pid)
    with pytest.raises(RemoteDied):
        r.call("add", 1)


def test_close_kills_detached_processes(server):
    r = server.spawn("tests.harness.forkable_demo:Counter")
    detached = r.call("detach")
    orphan = r.call("double_fork_orphan")
    time.sleep(0.1)
    assert _alive(detached) and _alive(orphan)
    r.close()
    time.sleep(0.2)
    assert not _alive(detached)
    assert not _alive(orphan)


def test_bad_factory_reports_error(server):
    with pytest.raises(RemoteError, match="ModuleNotFoundError|No module"):
        server.spawn("no_such_module_xyz:Thing")


def test_server_close_kills_everything():
    s = ForkServer(name="test")
    r = s.spawn("tests.harness.forkable_demo:Counter")
    c = r.fork()
    pids = [r.pid, c.pid, s.pid]
    s.close()
    time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def test_uid_sweeps_refuse_root_and_the_callers_uid():
    """`kill_user_processes` signals a whole uid: never root's (every service) nor our own (ourselves)."""
    for uid in {0, os.getuid(), os.geteuid()}:
        with pytest.raises(ValueError, match="refusing"):
            kill_user_processes(uid, timeout=1)
        with pytest.raises(ValueError, match="refusing"):
            kill_tree_of_user(os.getpid(), uid, timeout=1)
