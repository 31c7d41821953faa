"""Command line of `distributed_test.sh` (run, status, stop)."""
from __future__ import annotations

import sys

from densepolicy.config import ConfigError, describe
from densepolicy.launcher.config import LauncherConfig, load_launcher_config
from densepolicy.launcher.plan import EXIT_ENVIRONMENT, EXIT_USAGE, LaunchError, RunRequest

USAGE = """\
usage: ./distributed_test.sh MODEL DATASET METHOD PROC_PER_GPU TMUX_START_ID [--config FILE] [key=value ...]
       ./distributed_test.sh status [TMUX_START_ID] [--config FILE] [key=value ...]
       ./distributed_test.sh stop [TMUX_START_ID] [--config FILE] [key=value ...]

Starts one vLLM server per GPU (one vLLM-CPU server when there is no GPU) and PROC_PER_GPU
sample_tree.py workers per GPU, each on its contiguous shard of num_gpus x PROC_PER_GPU, in tmux
sessions server<ID> / agent<ID> (ID offset by TMUX_START_ID; socket `tmux -L <tmux_socket>`),
or submits the same as a Slurm array job (backend=slurm). Re-running the same command resumes
every unfinished shard and reuses running servers. Logs: <output_dir>/logs/.

  MODEL          model directory or a name from configs/ (e.g. SmolLM2-135M-Instruct)
  DATASET        gsm8k | math | alfworld | babyai (see configs/)
  METHOD         codeact_agent_tree (tree sampling) | codeact_agent (evaluation)
  PROC_PER_GPU   workers per GPU (per CPU server in CPU mode)
  TMUX_START_ID  offset of session names and ports, so several runs can share a machine
  status         one line per session: role, shard, alive/exited, tasks done/total, pairs, last log line
  stop           stop that run's workers and servers (all runs of the socket without TMUX_START_ID)

Settings (configs/launcher.yaml or --config FILE, e.g. configs/launcher_slurm.yaml; override with key=value;
sampler.KEY=VALUE goes to sample_tree.py, serving.KEY=VALUE to configs/serving.yaml):
{settings}

Exit codes: 0 ok; 1 a worker failed (wait=true); 2 bad arguments, unknown dataset/method, output dir of
another run, TMUX_START_ID in use; 3 model not found; 4 tmux/Slurm missing, no free port, GPU busy;
5 a server did not start (its log tail is shown).
"""


def _split(args: list[str]) -> tuple[list[str], list[str], str | None]:
    """(positional arguments, key=value overrides, --config file or None)."""
    config, rest, i = None, [], 0
    while i < len(args):
        if args[i] == "--config":
            if i + 1 >= len(args):
                raise LaunchError("--config needs a file name", EXIT_USAGE)
            config, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--config="):
            config = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    positional = [a for a in rest if "=" not in a]
    overrides = [a for a in rest if "=" in a]
    return positional, overrides, config


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name} must be an integer, got {value!r}", EXIT_USAGE) from None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE.format(settings=describe(LauncherConfig)))
        return 0 if args else EXIT_USAGE
    try:
        positional, overrides, config = _split(args)
        cfg = load_launcher_config(overrides, config)
        command = positional[0] if positional else ""
        if command in ("status", "stop"):
            if len(positional) > 2:
                raise LaunchError(f"{command} takes at most one TMUX_START_ID, got {positional[1:]}", EXIT_USAGE)
            start_id = _int(positional[1], "TMUX_START_ID") if len(positional) == 2 else None
            from densepolicy.launcher import commands

            return (commands.status if command == "status" else commands.stop)(cfg, start_id)
        if len(positional) != 5:
            raise LaunchError(f"expected MODEL DATASET METHOD PROC_PER_GPU TMUX_START_ID, got {len(positional)} "
                              f"argument(s): {positional} (see --help)", EXIT_USAGE)
        model, dataset, method, per_gpu, start = positional
        request = RunRequest(model, dataset, method, _int(per_gpu, "PROC_PER_GPU"), _int(start, "TMUX_START_ID"))
        from densepolicy.launcher import commands

        return commands.run(request, cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; sessions already started keep running (./distributed_test.sh stop ...)", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
