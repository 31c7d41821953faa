"""A checkout and venv under the temp folder (where CI often clones): the math env tests and a tree
sampler run on GSM8K pass from there. The sandbox hides the temp folder behind a private tmpfs when the
worker is root, so this fails unless the sandbox exposes the checkout and the venv (issue 11).

The copy holds the checkout's files (tracked and untracked, not ignored) and a venv of its own whose
site-packages links every entry of this venv's (so nothing is installed); the venv's editable install
of this checkout is left out, so `envs` and `densepolicy` come from the copy."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sysconfig
import tempfile
import venv
from pathlib import Path

import pytest

from densepolicy.paths import PROJECT_ROOT, data_dir
from envs import load_env

MARK = "IMPORTED-IN-SANDBOX"


def make_copy(dest: Path) -> Path:
    """Copy the checkout's files to `dest` and make `dest/.venv`; return the copy's python."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT_ROOT, capture_output=True, check=True).stdout.decode()
    for rel in sorted(set(filter(None, listed.split("\0")))):
        src = PROJECT_ROOT / rel
        if src.is_file() or src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(dest / ".venv")
    python = dest / ".venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for ours in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        for entry in Path(ours).iterdir():
            if not entry.name.startswith("__editable__") and not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry)
    return python


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory):
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy")
    dest = tmp_path_factory.mktemp("checkout") / "densepolicy"
    python = make_copy(dest)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["DENSEPOLICY_DATA_DIR"] = str(data_dir())
    probe = "import envs, densepolicy, sympy; print(envs.__file__, densepolicy.__file__, sympy.__file__)"
    where = subprocess.run([str(python), "-c", probe],
                           cwd=dest, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(path.startswith(str(dest) + "/") for path in where), where  # really the copy
    return dest, python, env


@pytest.mark.timeout(1500)  # copies the checkout (fixture), then a pytest run with a 900 s limit
def test_math_env_tests_pass_from_a_checkout_in_the_temp_folder(checkout_copy):
    dest, python, env = checkout_copy
    assert str(dest).startswith(os.path.realpath(tempfile.gettempdir()) + "/")
    result = subprocess.run([str(python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                             "tests/unit/envs/test_math_env.py"], cwd=dest, env=env, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and "skipped" not in result.stdout


def test_tree_sampler_on_gsm8k_from_a_checkout_in_the_temp_folder(checkout_copy, fake_server, tmp_path):
    """The model imports a stdlib and a venv module that the sandbox did not preload, then answers."""
    dest, python, env = checkout_copy
    gsm8k = load_env("gsm8k", split="train")
    targets = {gsm8k.start(t).goal: gsm8k.task_info(t)["target"] for t in gsm8k.task_ids()}

    def reply(messages, request):
        if MARK in messages[-1]["content"]:
            target = next(t for goal, t in targets.items() if any(goal in m["content"] for m in messages))
            return f"Thought: done.\nAnswer: {target}"
        return ("Thought: compute.\nAction:\nimport heapq, encodings.idna, sympy.crypto\n"
                f"print('{MARK}', heapq.nsmallest(1, [3, 2]), 'ü'.encode('idna'), sympy.crypto.__name__)\n"
                "End Action")

    server = fake_server(reply)
    out = tmp_path / "run"
    result = subprocess.run([str(python), "sample_tree.py", "codeact_agent_tree", "gsm8k", "--shard", "0",
                             "--num_shards", "1", "--server_url", server.base_url, "--model", "fake",
                             "--output_dir", str(out), "context_length=100000", "progress=false",
                             "in_context_number=0", "base=2", "max_steps=3", "window_size=2",
                             "max_sample_number=2", "max_tasks=2"],
                            cwd=dest, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    with (out / "gsm8k.train.0.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(float(r["score"]) == 1.0 for r in rows), rows
    dump = [json.loads(line) for line in (out / "trees" / "gsm8k.train.0.jsonl").open()]
    observations = [d["observation"] for d in dump if d["assistant"].startswith("Thought: compute.")]
    assert observations and all(o.startswith(f"{MARK} [2] b'xn--tda' sympy.crypto") for o in observations), \
        observations
