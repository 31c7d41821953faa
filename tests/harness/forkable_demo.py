"""A small object hosted by the forkable tests (importable by the zygote via the project root)."""
import os
import subprocess
import time

from envs.forkable import host_callback


class Counter:
    def __init__(self, start=0):
        self.n = start

    def add(self, k):
        self.n += k
        return self.n

    def pid(self):
        return os.getpid()

    def boom(self):
        raise KeyError("nope")

    def sleep(self, seconds):
        time.sleep(seconds)

    def ask_parent(self, x):
        return host_callback("double", x)

    def detach(self):
        """Start a process in a new session, like daemonising code would."""
        return subprocess.Popen(["sleep", "1000"], start_new_session=True).pid

    def double_fork_orphan(self):
        """Double-fork into a new session so the grandchild is orphaned (adopted by a subreaper)."""
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            pid = os.fork()
            if pid == 0:
                time.sleep(1000)
                os._exit(0)
            os.write(w, str(pid).encode())
            os._exit(0)
        os.close(w)
        return int(os.read(r, 32))
