#!/usr/bin/env python
r"""Run one worker: METHOD (codeact_agent_tree | codeact_agent) on shard K of N of DATASET.

    python sample_tree.py codeact_agent_tree gsm8k --shard 0 --num_shards 4 \
        --server_url http://127.0.0.1:8000/v1 --model SmolLM2-135M-Instruct [key=value ...]

Outputs: <output_dir>/<dataset>.<split>.<K>.csv (one row per task) and, for the tree,
<output_dir>/trees/<dataset>.<split>.<K>.jsonl (one line per node). Killed and restarted with the
same command, it resumes without losing finished tasks or finished nodes.

Exit codes: 0 done; 2 refused, nothing to retry (bad setting, missing data, a shard made with other
settings or damaged, an output directory that cannot be created, a request the server rejects: wrong model
name, bad request, malformed replies);
3 the server did not answer within retry_window_s (rerun the same command to resume); 4 another
process is writing this shard (its pid and host are named); 5 an output cannot be written (disk full,
quota, read-only file system, permissions: the file is named; fix, then rerun the same command to resume);
143 stopped by SIGTERM (the shard lock is released; rerun to resume).
"""
from __future__ import annotations

import argparse
import logging
import sys

from densepolicy.config import ConfigError, describe
from densepolicy.sampling.config import METHODS, SamplerConfig, default_output_dir, resolve_sampler_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="key=value settings (configs/sampler.yaml, then configs/tasks/<dataset>.yaml; tree.* keys are "
               "codeact_agent_tree's only, agent.* codeact_agent's only, and either can be given without the prefix, "
               "base=3):\n" + describe(SamplerConfig))
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("dataset", help="gsm8k, math, alfworld, alfworld_put, babyai (configs/tasks/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value settings")
    parser.add_argument("--shard", type=int, default=0, help="this worker's shard index K (0-based)")
    parser.add_argument("--num_shards", type=int, default=1, help="number of shards N")
    parser.add_argument("--server_url", default="http://127.0.0.1:8000/v1", help="OpenAI-compatible base URL")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="registered model name or model directory")
    parser.add_argument("--output_dir", default=None,
                        help="run directory (default eval_results/<method>.<model>/<run_name>/)")
    parser.add_argument("--log_level", default="WARNING", help="logging level (INFO shows replays and resumes)")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

    from densepolicy.file_lock import LockHeldError, LockLostError, Terminated
    from densepolicy.results_io import CorruptFileError, OutputWriteError, is_fix_then_rerun
    from densepolicy.sampling.worker import ServerDownError, ServerRejectedError, run_worker
    try:
        cfg = resolve_sampler_config(args.method, args.dataset, args.overrides)
        output_dir = args.output_dir or default_output_dir(cfg, args.model)
        summary = run_worker(cfg, args.model, args.server_url, args.shard, args.num_shards, output_dir)
    except (ConfigError, CorruptFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServerRejectedError as exc:
        hint = " (--model must be a name the server serves; GET /v1/models lists them)" if "HTTP 404" in str(exc) else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    except (LockHeldError, LockLostError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except OutputWriteError as exc:  # disk full, read-only, permissions: names the file and the fix
        print(f"error: {exc}", file=sys.stderr)
        return 5
    except OSError as exc:  # an output that cannot be created (not a directory, ...): names the file
        if is_fix_then_rerun(exc):
            print(f"error: {OutputWriteError(exc.filename or '?', exc)}", file=sys.stderr)
            return 5
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"stopped by {exc.signal_name}; the shard lock is released and finished work is saved: rerun the "
              f"same command to resume", file=sys.stderr)
        return int(exc.code)
    except ServerDownError as exc:
        print(f"error: the LLM server at {args.server_url} is not answering: {exc}\n"
              f"Finished tasks and nodes are saved; rerun the same command to resume.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"done: {summary['ran']} task(s) run, {summary['tasks']} in shard -> {summary['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
