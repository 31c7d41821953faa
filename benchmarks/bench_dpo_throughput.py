#!/usr/bin/env python
"""DPO and SFT training throughput on CPU: stock LLaMA-Factory vs the `densepolicy_fast` plugin, side by side.

    .venv/bin/python benchmarks/bench_dpo_throughput.py [--pairs 2] [--epochs 2] [--levers] [--sft-seqs 3]
    .venv/bin/python benchmarks/bench_dpo_throughput.py --skip-dpo --sft-packing --sft-seqs 8 --sft-tokens 400

DPO: `TreeDPO/configs/cpu_dpo.yaml` on the embedded SmolLM2-135M-Instruct (fp32, full DPO, sigmoid, beta 0.1),
one pair per step, `epochs` passes over `pairs` synthetic sibling pairs of the agent shape: a multi-turn
prompt of about `--prompt-tokens` tokens shared by chosen and rejected, which differ in a last assistant
message of about 30 tokens. Rows:
- `stock, gradient checkpointing` = cpu_dpo as shipped before the plugin (LLaMA-Factory's default);
- `stock` = the same without gradient checkpointing (LLaMA-Factory's `disable_gradient_checkpointing`);
- `plugin (all levers)` = `densepolicy_fast: true`; with `--levers`, also each lever alone;
- with `--lora`: `stock + LoRA` and `plugin + LoRA` = the same with LLaMA-Factory's own LoRA (`finetuning_type: lora`,
  rank 16, alpha 32, every linear layer, as `gpu_lora.yaml`; the reference is the base model with the adapter off).
  LoRA changes what is trained (an approximation of full DPO, not an exact lever): a throughput lever to weigh
  against what it does to the model.
`pair_tok_per_s` = (tokens of chosen + rejected sequences) x pairs trained / LLaMA-Factory's train_runtime.
SFT: `TreeDPO/configs/cpu_sft.yaml`, one epoch over `--sft-seqs` multi-turn sequences, one per micro-batch and
step (~`--sft-tokens` tokens, most of them masked observations), stock vs the plugin's `scored_logits`
(`--sft-packing`: also LLaMA-Factory's `neat_packing`, sequences packed into cutoff_len blocks with a
block-diagonal mask); `tok_per_s` = every token of the dataset / train_runtime.
`vs_first` is a row's throughput over the first row of its stage. Prints a table and writes
benchmarks/results/dpo_throughput.csv.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import print_and_write  # noqa: E402

from densepolicy.paths import embedded_model_dir  # noqa: E402
from densepolicy.postprocess.lf_dataset import dataset_info_entry, pair_to_sharegpt, register_dataset  # noqa: E402
from densepolicy.config import read_yaml  # noqa: E402
from densepolicy.training.train import TrainResult, template_pair, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "dpo_throughput.csv"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
WORDS = ("the key door room ball box red blue green grey purple yellow left right forward pick up drop toggle "
         "open closed locked you see a wall north south east west agent carrying nothing mission go to").split()

STOCK_GC = ["densepolicy_fast=false", "disable_gradient_checkpointing=false"]
STOCK = ["densepolicy_fast=false", "disable_gradient_checkpointing=true"]
DPO_RUNS = {
    "stock, gradient checkpointing": STOCK_GC,
    "stock": STOCK,
    "plugin (all levers)": ["densepolicy_fast=true", "disable_gradient_checkpointing=true"],
}
LEVER_RUNS = {
    "scored_logits only": ["densepolicy_fast=[scored_logits]", "disable_gradient_checkpointing=true"],
    "shared_prefix only": ["densepolicy_fast=[shared_prefix]", "disable_gradient_checkpointing=true"],
    "reference_cache only": ["densepolicy_fast=[reference_cache]", "disable_gradient_checkpointing=true"],
}
LORA = ["finetuning_type=lora", "lora_rank=16", "lora_alpha=32", "lora_dropout=0.0", "lora_target=all"]
LORA_RUNS = {
    "stock + LoRA": [*STOCK, *LORA],
    "plugin + LoRA": ["densepolicy_fast=true", "disable_gradient_checkpointing=true", *LORA],
}
SFT_RUNS = {"stock": ["densepolicy_fast=false"], "plugin (scored_logits)": ["densepolicy_fast=true"]}
PACKING_RUNS = {"stock + neat_packing": ["densepolicy_fast=false", "packing=true", "neat_packing=true"]}


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def agent_conversation(rng: random.Random, prompt_tokens: int) -> list[dict[str, str]]:
    """user task, then (assistant action ~30 tokens, user observation ~170 tokens) turns until about
    `prompt_tokens` tokens (1 word ~ 1 token with this vocabulary); ends with a user turn."""
    messages = [{"role": "user", "content": "Mission: " + _text(rng, 120)}]
    while sum(len(m["content"].split()) + 5 for m in messages) < prompt_tokens:
        messages.append({"role": "assistant", "content": "Thought: " + _text(rng, 22) + "\nAction: forward"})
        messages.append({"role": "user", "content": "Observation: " + _text(rng, 160)})
    return messages


def write_pairs(data: Path, n: int, prompt_tokens: int, seed: int = 0) -> str:
    """`n` sibling pairs (same prompt, different ~30-token last step) registered as `bench_pairs`."""
    rng = random.Random(seed)
    records = [pair_to_sharegpt(agent_conversation(rng, prompt_tokens),
                                "Thought: " + _text(rng, 24) + "\nAction: pick up",
                                "Thought: " + _text(rng, 24) + "\nAction: toggle") for _ in range(n)]
    data.mkdir(parents=True, exist_ok=True)
    (data / "bench_pairs.json").write_text(json.dumps(records))
    register_dataset(data / "dataset_info.json", "bench_pairs", dataset_info_entry("bench_pairs", has_system=False))
    return "bench_pairs"


def write_sft(data: Path, n: int, prompt_tokens: int, seed: int = 1) -> str:
    """`n` multi-turn expert-like SFT records (assistant turns trained, observations masked) as `bench_sft`."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        messages = agent_conversation(rng, prompt_tokens)
        messages.append({"role": "assistant", "content": "Thought: " + _text(rng, 22) + "\nAction: done"})
        records.append({"conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                                          for m in messages]})
    (data / "bench_sft.json").write_text(json.dumps(records))
    info = json.loads((data / "dataset_info.json").read_text())
    info["bench_sft"] = {"file_name": "bench_sft.json", "formatting": "sharegpt",
                         "columns": {"messages": "conversations"}}
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return "bench_sft"


def token_counts(data: Path) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """[(shared prompt, chosen, rejected) tokens] per pair and [(all, trained) tokens] per SFT record, as
    LLaMA-Factory's smollm2 template encodes them."""
    pair = template_pair({"model_name_or_path": str(embedded_model_dir()), "template": "smollm2",
                          "default_system": SYSTEM})
    pairs = []
    for rec in json.loads((data / "bench_pairs.json").read_text()):
        msgs = [{"role": "user" if m["from"] == "human" else "assistant", "content": m["value"]}
                for m in rec["conversations"]]
        lens = []
        for answer in (rec["chosen"]["value"], rec["rejected"]["value"]):
            p, a = pair.template.encode_oneturn(pair.tokenizer, msgs + [{"role": "assistant", "content": answer}],
                                                SYSTEM)
            lens.append((len(p), len(a)))
        pairs.append((lens[0][0], sum(lens[0]), sum(lens[1])))
    sft = []
    for rec in json.loads((data / "bench_sft.json").read_text()):
        msgs = [{"role": "user" if m["from"] == "human" else "assistant", "content": m["value"]}
                for m in rec["conversations"]]
        turns = pair.template.encode_multiturn(pair.tokenizer, msgs, SYSTEM)
        sft.append((sum(len(q) + len(a) for q, a in turns), sum(len(a) for _, a in turns)))
    return pairs, sft


def step_seconds(result: TrainResult) -> float:
    """Median seconds per logged step after the first (LLaMA-Factory's trainer_log.jsonl elapsed times, in the
    run's effective `output_dir`: the model directory, or its adapter folder for LoRA)."""
    times = []
    log = Path(read_yaml(result.config_path)["output_dir"]) / "trainer_log.jsonl"
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            h, m, s = (int(x) for x in row["elapsed_time"].split(":"))
            times.append(h * 3600 + m * 60 + s)
    deltas = sorted(b - a for a, b in zip(times, times[1:]))
    return float(deltas[len(deltas) // 2]) if deltas else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2, help="DPO pairs (one per step)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the pairs (cpu_dpo's experiment: 2)")
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--sft-seqs", type=int, default=3, help="SFT sequences (one epoch); 0 skips SFT")
    parser.add_argument("--sft-tokens", type=int, default=1500, help="tokens per SFT sequence (about)")
    parser.add_argument("--sft-packing", action="store_true", help="also stock + neat_packing")
    parser.add_argument("--skip-dpo", action="store_true")
    parser.add_argument("--levers", action="store_true", help="also each plugin lever alone")
    parser.add_argument("--lora", action="store_true", help="also stock and plugin with LoRA (rank 16, all linear)")
    parser.add_argument("--skip-stock", action="store_true", help="leave out the stock row (no checkpointing)")
    parser.add_argument("--skip-gc", action="store_true", help="leave out the gradient-checkpointing stock row")
    args = parser.parse_args()
    runs = dict(DPO_RUNS)
    if args.skip_gc:
        runs.pop("stock, gradient checkpointing")
    if args.skip_stock:
        runs.pop("stock")
    if args.levers:
        runs.update(LEVER_RUNS)
    if args.lora:
        runs.update(LORA_RUNS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dpo_throughput_") as tmp:
        data = Path(tmp) / "data"
        write_pairs(data, args.pairs, args.prompt_tokens)
        write_sft(data, max(args.sft_seqs, 1), args.sft_tokens)
        pairs, sft = token_counts(data)
        pair_tokens = sum(c + r for _, c, r in pairs) * args.epochs
        shape = (f"prompt {min(p for p, _, _ in pairs)}-{max(p for p, _, _ in pairs)} tok, chosen/rejected "
                 f"{min(c for _, c, _ in pairs)}-{max(r for _, _, r in pairs)} tok")
        first = None
        for label, overrides in ({} if args.skip_dpo else runs).items():
            out = Path(tmp) / f"dpo{len(rows)}"
            start = time.perf_counter()
            result = train("cpu_dpo", dataset="bench_pairs", model=embedded_model_dir(), dataset_dir=data,
                           output_dir=out, progress=False,
                           overrides=[f"max_steps={args.pairs * args.epochs}", "per_device_train_batch_size=1",
                                      "gradient_accumulation_steps=1", "warmup_ratio=0", *overrides])
            runtime = float(result.metrics["train_runtime"])
            tps = pair_tokens / runtime
            first = first or tps
            rows.append({"stage": "DPO", "run": label, "steps": args.pairs * args.epochs, "shape": shape,
                         "train_runtime_s": round(runtime, 1), "median_step_s": step_seconds(result),
                         "tok_per_s": round(tps, 1), "vs_first": f"{tps / first:.2f}x",
                         "train_loss": round(float(result.metrics.get("train_loss", "nan")), 5),
                         "wall_s": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
        if args.sft_seqs:
            first = None
            sft_tokens = sum(n for n, _ in sft)
            trained = sum(t for _, t in sft)
            for label, overrides in {**SFT_RUNS, **(PACKING_RUNS if args.sft_packing else {})}.items():
                out = Path(tmp) / f"sft{len(rows)}"
                start = time.perf_counter()
                result = train("cpu_sft", dataset="bench_sft", model=embedded_model_dir(), dataset_dir=data,
                               output_dir=out, progress=False,
                               overrides=["num_train_epochs=1", "gradient_accumulation_steps=1",
                                          "warmup_ratio=0", "disable_shuffling=true", "logging_steps=1",
                                          *overrides])
                runtime = float(result.metrics["train_runtime"])
                tps = sft_tokens / runtime
                first = first or tps
                steps = json.loads((out / "trainer_state.json").read_text())["global_step"]
                rows.append({"stage": "SFT", "run": label, "steps": steps,
                             "shape": f"{sft_tokens // len(sft)} tok/seq, {100 * trained // sft_tokens} % trained",
                             "train_runtime_s": round(runtime, 1), "median_step_s": step_seconds(result),
                             "tok_per_s": round(tps, 1), "vs_first": f"{tps / first:.2f}x",
                             "train_loss": round(float(result.metrics.get("train_loss", "nan")), 5),
                             "wall_s": round(time.perf_counter() - start, 1)})
                print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    print_and_write(rows, RESULTS, title=f"DPO / SFT throughput on {os.cpu_count()} CPUs, SmolLM2-135M fp32 "
                                         f"(1-min load average at the end: {load:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
