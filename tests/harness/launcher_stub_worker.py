"""Stand-in for sample_tree.py in launcher tests: same command line, same shard/resume behaviour, no LLM.

    launcher_stub_worker.py METHOD DATASET --shard K --num_shards N --server_url URL --model M
                            --output_dir D [max_tasks=20] [key=value ...]

Tasks are "0".."max_tasks-1"; `<output_dir>/stub_worker.json` may set {"sleep": s, "fail_shard": k,
"stop_delay": s (seconds it takes to exit on SIGTERM/SIGHUP, as a worker finishing its last write does)}
(settings only the stand-in knows, so they cannot go through the sampler's key=value). Shard K gets the
contiguous block ceil(tasks/N) * K ... (like the sampler).
Each finished task appends one whole CSV line (flush + fsync), so a killed worker resumes without
duplicates. It checks the server answers GET /models first (exit 3 if not), shows a tqdm bar, and
exits 0 when its shard is complete.
"""
import argparse
import csv
import json
import math
import os
import signal
import sys
import time
import urllib.request

from tqdm import tqdm


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("method")
    parser.add_argument("dataset")
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--num_shards", type=int, required=True)
    parser.add_argument("--server_url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", required=True)
    args, extra = parser.parse_known_args()
    opts = dict(e.split("=", 1) for e in extra)
    stub_file = os.path.join(args.output_dir, "stub_worker.json")
    stub = json.load(open(stub_file)) if os.path.exists(stub_file) else {}
    tasks, sleep = int(opts.get("max_tasks", 20)), float(stub.get("sleep", 0.2))
    stop_delay = float(stub.get("stop_delay", 0))
    if stop_delay:
        def stop_slowly(signum, _frame):
            time.sleep(stop_delay)
            sys.exit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, stop_slowly)
    if int(stub.get("fail_shard", -1)) == args.shard:
        print("failing on purpose", file=sys.stderr)
        return 7
    with urllib.request.urlopen(args.server_url.rstrip("/") + "/models", timeout=10) as reply:
        if reply.status != 200:
            return 3
    size = math.ceil(tasks / args.num_shards)
    mine = [str(i) for i in range(args.shard * size, min(tasks, (args.shard + 1) * size))]
    path = os.path.join(args.output_dir, f"{args.dataset}.test.{args.shard}.csv")
    done = set()
    if os.path.exists(path):
        with open(path, newline="") as fh:
            done = {row["task_id"] for row in csv.DictReader(fh)}
    new_file = not os.path.exists(path)
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(["task_id", "dataset", "method", "model", "status", "score", "pairs"])
            fh.flush()
            os.fsync(fh.fileno())
        bar = tqdm(total=len(mine), initial=len(done & set(mine)), desc=f"shard {args.shard}")
        for task in mine:
            if task in done:
                continue
            time.sleep(sleep)
            writer.writerow([task, args.dataset, args.method, args.model, "done", 1.0, 2])
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(1)
        bar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
