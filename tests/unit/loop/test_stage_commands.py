"""A loop stage's command and everything it started stop with the loop: `kill` of a demo or experiment must not
leave, e.g., the LLaMA-Factory trainer that TreeDPO/train.py started training on its own."""
import os
import signal
import subprocess
import sys
import textwrap
import time

from densepolicy.paths import PROJECT_ROOT

# a "stage command" that starts a child of its own (like train.py -> the trainer), records the child's pid, waits
LOOP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from densepolicy.loop_stages import LoopStages, stop_on_signals
    stop_on_signals()
    stages = LoopStages(Path(sys.argv[1]), tag="t", n_stages=1, proc_per_server=1, tmux_start_id=0, serving={},
                        sampler={})
    child = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);" \\
            f"open({sys.argv[2]!r}, 'w').write(str(p.pid)); time.sleep(300)"
    try:
        stages.run([sys.executable, "-c", child], "stage")
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone for our purpose
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_killing_the_loop_stops_the_stage_command_and_its_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    loop = subprocess.Popen([sys.executable, "-c", LOOP, str(tmp_path / "run"), str(pid_file)], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert alive(grandchild)
    loop.send_signal(signal.SIGTERM)  # `kill PID` of a loop started in the background
    out, _ = loop.communicate(timeout=60)
    assert loop.returncode == 130 and "interrupted" in out
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild), "the stage command's own child survived the loop"
