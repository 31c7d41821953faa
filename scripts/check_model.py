"""Check that a trained model directory is self-contained and servable, and print how to evaluate it.

  .venv/bin/python scripts/check_model.py TreeDPO/saves/SmolLM2-135M-Instruct/full/<dataset> [--dataset math]

Exit 0 and the launcher command when the directory has config.json, safetensors weights, tokenizer and
chat template (a bare LoRA adapter is rejected: merge it first); exit 2 with the missing pieces otherwise.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densepolicy.training.train import TrainingError, servable_model_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="trained (merged) model directory")
    parser.add_argument("--dataset", default="<dataset>", help="dataset for the printed evaluation command")
    args = parser.parse_args(argv)
    try:
        spec = servable_model_spec(args.model_dir)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"servable: {spec.path} (served as {spec.served_name!r}, context {spec.context_length} tokens)")
    print(f"evaluate: ./distributed_test.sh {args.model_dir} {args.dataset} codeact_agent 1 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
