"""TreeDPO: DPO-train a model on a pairwise dataset with LLaMA-Factory and export a servable model.

  .venv/bin/python TreeDPO/train.py CONFIG --dataset NAME [--model DIR|NAME] [--output-dir DIR] [key=value ...]

CONFIG is a name under TreeDPO/configs/ (cpu_tiny, gpu_full_zero3, gpu_lora) or a YAML path; NAME must be
registered in TreeDPO/data/dataset_info.json (see prepare_dataset.py); key=value overrides any
LLaMA-Factory key (e.g. max_steps=8 learning_rate=1e-6). The output directory (default
TreeDPO/saves/<model>/<full|lora>/<dataset>) holds the servable model, train_config.yaml, train.log and
dpo_loss.png / dpo_rewards.png; evaluate it with ./distributed_test.sh <output dir> <dataset> codeact_agent 1 0.

Several nodes: run this same command on every node with NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's
host) and MASTER_PORT set, or under `srun` (one task per node: the rank comes from SLURM_PROCID), or submit it
with --slurm (configs/train_slurm.yaml; settings as slurm.key=value, e.g. slurm.nodes=2). The nodes check that
they run the same arguments; only node 0 checks and writes the output directory, exports and plots.
"""
import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densepolicy.config import ConfigError
from densepolicy.training.gpu_memory import ALLOW_ENV
from densepolicy.training.slurm_train import split_slurm_overrides, submit
from densepolicy.training.train import TrainingError, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="TreeDPO/configs/<config>.yaml name, or a YAML path")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="LLaMA-Factory key overrides")
    parser.add_argument("--dataset", help="dataset name(s) registered in dataset_info.json (comma-separated)")
    parser.add_argument("--dataset-dir", help="directory of dataset_info.json (default TreeDPO/data)")
    parser.add_argument("--model", help="base model directory, or a name under models/")
    parser.add_argument("--output-dir", help="where the trained model goes (must not exist or be empty)")
    parser.add_argument("--resume", action="store_true", help="continue in an existing output dir from its last checkpoint")
    parser.add_argument("--skip-template-check", action="store_true",
                        help="do not compare LLaMA-Factory's template with the model's chat template")
    parser.add_argument("--allow-busy-gpus", action="store_true",
                        help="train even when a GPU already has 10 %% or more of its memory in use (a vLLM server "
                             "left running); same as DENSEPOLICY_ALLOW_BUSY_GPUS=1")
    parser.add_argument("--slurm", action="store_true",
                        help="submit the run as one multi-node Slurm job (sbatch + srun); settings in "
                             "configs/train_slurm.yaml, overridden as slurm.key=value")
    parser.add_argument("--slurm-config", help="Slurm settings file (default configs/train_slurm.yaml)")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    slurm_overrides, overrides = split_slurm_overrides(args.overrides)
    try:
        if args.slurm:
            if args.allow_busy_gpus:  # sbatch passes this process's environment to the job (--export=ALL)
                os.environ[ALLOW_ENV] = "1"
            return submit(args.config, args.dataset, args.model, args.output_dir, overrides, args.dataset_dir,
                          template_check=not args.skip_template_check, resume=args.resume,
                          slurm_overrides=slurm_overrides, slurm_config=args.slurm_config)
        if slurm_overrides or args.slurm_config:
            raise ConfigError(f"{(slurm_overrides or ['--slurm-config'])[0]}: Slurm settings need --slurm")
        result = train(args.config, dataset=args.dataset, model=args.model, output_dir=args.output_dir,
                       overrides=overrides, dataset_dir=args.dataset_dir,
                       template_check=not args.skip_template_check, resume=args.resume,
                       allow_busy_gpus=args.allow_busy_gpus)
    except (ConfigError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.node_rank:
        print(f"node {result.node_rank} of {result.nnodes}: training done (log: {result.log_path}); node 0 writes "
              f"the model to {result.model_dir}")
        return 0
    loss = result.metrics.get("train_loss")
    print(f"trained model: {result.model_dir}")
    print(f"train loss {loss:.4f}" if isinstance(loss, float) else "train loss n/a",
          f"| llamafactory-cli train {result.train_seconds:.1f} s"
          + (f", export {result.export_seconds:.1f} s" if result.export_seconds else ""))
    print("plots:", " ".join(str(p) for p in result.plots))
    print(f"log: {result.log_path}")
    print(f"evaluate: ./distributed_test.sh {result.model_dir} <dataset> codeact_agent 1 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
