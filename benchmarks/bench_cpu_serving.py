#!/usr/bin/env python
"""vLLM-CPU throughput by dtype and by number of concurrent requests (what `configs/serving.yaml` dtype and
the workers per dataset of the demo and the experiment are chosen from).

    .venv/bin/python benchmarks/bench_cpu_serving.py                         # bfloat16 and float32, 1..32 requests
    .venv/bin/python benchmarks/bench_cpu_serving.py --dtypes float32 --concurrency 8 16

For each dtype a fresh vLLM-CPU server serves the embedded model; for each concurrency n, n chat requests
with an agent-sized prompt (~1,700 tokens, the same long prefix with a short distinct tail, as tree siblings
have) and `max_tokens` new tokens each (`ignore_eos`, so every request generates exactly that many) are sent
at once. The table gives wall seconds and generated tokens/s, and the speed-up of each dtype against the
first one at the same n. Prints whether this CPU has native bf16 (what `dtype: auto` decides on). Holds the
machine-wide vLLM lock. Writes benchmarks/results/cpu_serving.csv.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from densepolicy.file_lock import machine_vllm_lock  # noqa: E402
from densepolicy.serving.server import VLLMServer, cpu_has_native_bf16, load_serving_config  # noqa: E402
from benchmarks.results_table import print_and_write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PREFIX = " ".join(f"cell{i}=wall" for i in range(300))  # ~1,700 tokens, like a BabyAI prompt with its tool list


def chat(base_url: str, model: str, i: int, max_tokens: int) -> int:
    """One request; returns the number of generated tokens."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": 1.0, "seed": i, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"{PREFIX}\nTask {i}: go to the red ball ({i * 17 % 1000})."}]}
    request = urllib.request.Request(base_url + "/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=1800) as reply:
        return json.load(reply)["usage"]["completion_tokens"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 16, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    rows = []
    with machine_vllm_lock():
        for dtype in args.dtypes:
            cfg = load_serving_config(overrides=[f"dtype={dtype}"])
            server = VLLMServer(args.model, cfg, RESULTS / f"cpu_serving_{dtype}.log")
            server.start()
            try:
                chat(server.base_url, server.served_name, -1, 1)  # warm-up: the shared prefix is now cached
                for n in args.concurrency:
                    start = time.monotonic()
                    with concurrent.futures.ThreadPoolExecutor(n) as pool:
                        generated = sum(pool.map(lambda i, n=n, server=server: chat(
                            server.base_url, server.served_name, i + 1000 * n, args.max_tokens), range(n)))
                    wall = time.monotonic() - start
                    rows.append({"dtype": dtype, "concurrent": n, "generated_tokens": generated,
                                 "wall_s": round(wall, 2), "tokens_per_s": round(generated / wall, 1)})
                    print(f"[{dtype}] {n} requests: {generated} tokens in {wall:.1f} s", flush=True)
            finally:
                server.stop()
    first = {r["concurrent"]: r["tokens_per_s"] for r in rows if r["dtype"] == args.dtypes[0]}
    for r in rows:
        r[f"speedup_vs_{args.dtypes[0]}"] = round(r["tokens_per_s"] / first[r["concurrent"]], 2)
    print_and_write(rows, RESULTS / "cpu_serving.csv",
                    title=f"vLLM-CPU, {args.model}, ~1,700-token prompts, {args.max_tokens} new tokens per request; "
                          f"native bf16 on this CPU: {cpu_has_native_bf16()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
