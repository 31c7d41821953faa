"""Run a project script with a file system that fills up: `python tests/harness/fail_writes.py SCRIPT ARGS...`.

Environment: `FAIL_UNDER` (a directory), `FAIL_AFTER` (N): the N+1-th `os.fsync` of a file under
`FAIL_UNDER` (and every one after it) raises `OSError(FAIL_ERRNO)` (default ENOSPC), as a full disk,
an exhausted quota or a file system remounted read-only reports it at fsync time. Used by
tests/unit/sampling/test_no_silent_loss_odd_inputs.py; nothing else imports it.
"""
from __future__ import annotations

import errno
import os
import runpy
import sys

_real_fsync = os.fsync
_under = os.path.realpath(os.environ["FAIL_UNDER"])
_after = int(os.environ.get("FAIL_AFTER", "0"))
_errno = getattr(errno, os.environ.get("FAIL_ERRNO", "ENOSPC"))
_count = 0


def _fsync(fd: int) -> None:
    global _count
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if target.startswith(_under + os.sep):
        _count += 1
        if _count > _after:
            raise OSError(_errno, os.strerror(_errno))
    _real_fsync(fd)


os.fsync = _fsync
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
