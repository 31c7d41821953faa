"""Build (once) the warm-started model: expert trajectories, then SFT of the base model; print its directory.

  .venv/bin/python scripts/warm_start.py [key=value ...] [--rebuild] [--check]

Settings: configs/warm_start.yaml (keys below). The model is cached in `output_dir` with a stamp of its
inputs: a second call returns at once, a changed input rebuilds it. Use it as MODEL anywhere, e.g.
  ./distributed_test.sh SmolLM2-135M-Warmstart babyai codeact_agent 1 0 sampler.in_context_number=0
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densepolicy.config import ConfigError, describe
from densepolicy.training.train import TrainingError
from densepolicy.training.warm_start import WarmStartConfig, ensure_warm_start, warm_start_state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog="settings:\n" + describe(WarmStartConfig),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="configs/warm_start.yaml overrides")
    parser.add_argument("--rebuild", action="store_true", help="build even if the cached model is up to date")
    parser.add_argument("--check", action="store_true",
                        help="only say whether the cached model is up to date (exit 0) or not (exit 1)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once when logged to a file
    try:
        if args.check:
            state = warm_start_state(args.overrides)
            print(f"{state.model_dir}: {state.reason}")
            return 0 if state.current else 1
        model_dir = ensure_warm_start(args.overrides, rebuild=args.rebuild)
    except (ConfigError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"warm-started model: {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
