"""VLLMServer without vLLM: command/env building, bad input, crashes, timeouts, process-group cleanup.

A fake "python" (a shell script) stands in for the serving venv, so these tests take seconds.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from densepolicy.config import ConfigError
from densepolicy.serving.models import ModelError, ModelSpec
from densepolicy.serving import server as server_module
from densepolicy.serving.server import (ServerError, ServingConfig, VLLMServer, cpu_has_native_bf16, cpu_list,
                                        find_free_port, load_serving_config, port_in_use, wait_healthy)

FAKE_VLLM = textwrap.dedent('''
    """Pretends to be `python -m vllm.entrypoints.cli.main serve ...`: answers /health on --port."""
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    argv = sys.argv[1:]
    port = int(argv[argv.index("--port") + 1])
    seen = {"argv": argv, "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "HF_"))}}
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            data = json.dumps(seen).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
            self.wfile.write(data)
        def log_message(self, *a): pass
    print("fake vllm listening", flush=True)
    HTTPServer(("127.0.0.1", port), H).serve_forever()
''')


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for the serving venv's python."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def model_spec(tmp_path: Path) -> ModelSpec:
    return ModelSpec(name="tiny", path=tmp_path, served_name="tiny-served", context_length=1024)


def cfg(tmp_path: Path, python: str, **kw) -> ServingConfig:
    return ServingConfig(python=python, startup_timeout_s=kw.pop("startup_timeout_s", 20), **kw)


def test_command_and_environment_for_cpu(tmp_path):
    server = VLLMServer(model_spec(tmp_path), ServingConfig(seed=7, kv_cache_gb=3, omp_threads_bind="0-1"),
                        None, port=8123)
    argv = server.command()
    assert argv[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", str(tmp_path)]
    joined = " ".join(argv)
    for expected in ("--served-model-name tiny-served", "--port 8123", "--max-model-len 1024", "--seed 7",
                     "--enable-prefix-caching", "--enforce-eager"):
        assert expected in joined
    assert "--tensor-parallel-size" not in argv
    env = server.environment()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["HF_HUB_OFFLINE"] == "1"
    assert server.base_url == "http://127.0.0.1:8123/v1"
    assert "VLLM_CPU_KVCACHE_SPACE=3" in server.shell_command()


def test_command_and_environment_for_gpu(tmp_path):
    config = ServingConfig(device="gpu", tensor_parallel_size=2, gpu_memory_utilization=0.8,
                           extra_args=["--max-num-batched-tokens", "4096"], max_num_seqs=128)
    server = VLLMServer(model_spec(tmp_path), config, None, port=8000)
    argv = server.command()
    assert "--enforce-eager" not in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.8"
    assert argv[argv.index("--max-num-seqs") + 1] == "128"
    assert argv[-2:] == ["--max-num-batched-tokens", "4096"]
    assert not any(k.startswith("VLLM_CPU") for k in server.environment())


AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_native_bf16_is_read_from_cpu_flags():
    assert not cpu_has_native_bf16(AVX2_ONLY)
    assert cpu_has_native_bf16(AVX512_BF16) and cpu_has_native_bf16(ARM_BF16)
    assert not cpu_has_native_bf16("")


@pytest.mark.parametrize("native_bf16, requested, expected", [
    (False, "auto", "float32"),      # emulated bf16 is ~3x slower than fp32 on AVX2-only CPUs
    (True, "auto", "auto"),          # vLLM-CPU's own choice (bf16) where the CPU computes it natively
    (False, "bfloat16", "bfloat16"),  # an explicit dtype is never changed
])
def test_cpu_auto_dtype_depends_on_native_bf16(tmp_path, monkeypatch, native_bf16, requested, expected):
    monkeypatch.setattr(server_module, "cpu_has_native_bf16", lambda: native_bf16)
    argv = VLLMServer(model_spec(tmp_path), ServingConfig(dtype=requested), None, port=8123).command()
    assert argv[argv.index("--dtype") + 1] == expected
    gpu = VLLMServer(model_spec(tmp_path), ServingConfig(device="gpu", dtype=requested), None, port=8123).command()
    assert gpu[gpu.index("--dtype") + 1] == requested


def test_port_zero_picks_a_free_port(tmp_path):
    a = VLLMServer(model_spec(tmp_path), ServingConfig(port=0), None)
    assert a.port > 0 and not port_in_use(a.port)


def test_all_cpus_bind_string_matches_affinity():
    cpus = sorted(os.sched_getaffinity(0))
    expanded = []
    for part in cpu_list().split(","):
        lo, _, hi = part.partition("-")
        expanded += range(int(lo), int(hi or lo) + 1)
    assert expanded == cpus


def test_missing_model_directory_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match=str(missing)):
        VLLMServer(str(missing), ServingConfig(), None)


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use(port)
        server = VLLMServer(model_spec(tmp_path), cfg(tmp_path, fake_python(tmp_path, "exit 0\n")),
                            tmp_path / "log", port=port)
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
        assert server.proc is None
        assert find_free_port(start=port) != port


def test_missing_serving_python_is_named(tmp_path):
    server = VLLMServer(model_spec(tmp_path), cfg(tmp_path, str(tmp_path / "nope" / "python")), None)
    with pytest.raises(ServerError, match="serving venv python not found: .*nope/python.*make setup"):
        server.start()


def test_crash_at_startup_reports_exit_code_and_log_tail(tmp_path):
    python = fake_python(tmp_path, 'echo "loading model"\n'
                                   'echo "RuntimeError: Failed to infer device type" >&2\nexit 3\n')
    log = tmp_path / "logs" / "server.log"
    server = VLLMServer(model_spec(tmp_path), cfg(tmp_path, python), log)
    start = time.monotonic()
    with pytest.raises(ServerError) as info:
        server.start()
    message = str(info.value)
    assert "exited with code 3" in message and "Failed to infer device type" in message and str(log) in message
    assert time.monotonic() - start < 10  # noticed at once, not after the start-up timeout


def test_log_file_is_appended_not_overwritten(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("earlier run\n")
    server = VLLMServer(model_spec(tmp_path), cfg(tmp_path, fake_python(tmp_path, "echo second run; exit 1\n")), log)
    with pytest.raises(ServerError):
        server.start()
    text = log.read_text()
    assert text.startswith("earlier run\n") and "second run" in text


def test_never_healthy_times_out_and_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    python = fake_python(tmp_path, f"sleep 300 &\necho $! > {pid_file}\nsleep 300\n")
    server = VLLMServer(model_spec(tmp_path), cfg(tmp_path, python, startup_timeout_s=1.5), tmp_path / "log")
    with pytest.raises(ServerError, match="not healthy after 2 s"):
        server.start()
    child = int(pid_file.read_text())
    assert not _alive(child), "the server's child process survived stop()"


def test_start_serves_health_with_environment_then_stops(tmp_path):
    (tmp_path / "fake_vllm.py").write_text(FAKE_VLLM)
    python = fake_python(tmp_path, f'exec {sys.executable} {tmp_path / "fake_vllm.py"} "$@"\n')
    config = cfg(tmp_path, python, kv_cache_gb=5)
    with VLLMServer(model_spec(tmp_path), config, tmp_path / "server.log") as server:
        assert server.startup_s is not None and server.startup_s < 20
        import json
        import urllib.request
        seen = json.loads(urllib.request.urlopen(server.root_url + "/health", timeout=5).read())
        assert seen["env"]["VLLM_CPU_KVCACHE_SPACE"] == "5"
        assert seen["argv"][seen["argv"].index("--served-model-name") + 1] == "tiny-served"
        pid = server.proc.pid
    assert not _alive(pid) and server.proc is None
    assert not port_in_use(server.port)


def test_wait_healthy_without_process_times_out(tmp_path):
    port = find_free_port()
    with pytest.raises(ServerError, match="not healthy"):
        wait_healthy(f"http://127.0.0.1:{port}/v1", timeout=0.5, poll_s=0.1)


def test_serving_config_validation_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="command line: key 'port' must be 0..65535"):
        load_serving_config(None, ["port=70000"])
    with pytest.raises(ConfigError, match="key 'device' must be one of"):
        load_serving_config(None, ["device=tpu"])
    with pytest.raises(ConfigError, match="unknown key 'kv_cache'"):
        load_serving_config(None, ["kv_cache=2"])
    assert load_serving_config(None, ["kv_cache_gb=4"]).kv_cache_gb == 4


def test_cli_help_and_errors(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "densepolicy.serving.server", *args],
                              capture_output=True, text=True, timeout=60)

    helped = run("--help")
    assert helped.returncode == 0 and "kv_cache_gb" in helped.stdout
    bad = run(str(tmp_path / "missing-model"))
    assert bad.returncode == 2 and "missing-model" in bad.stderr and "Traceback" not in bad.stderr
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"max_position_embeddings": 4096}')
    printed = run(str(model_dir), "port=8011", "--print-command")
    assert printed.returncode == 0
    assert "--port 8011" in printed.stdout and "--max-model-len 4096" in printed.stdout
    assert "--served-model-name my-model" in printed.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
