"""The GPU training configs (TreeDPO/configs/gpu_*.yaml) against what is served: the cutoff covers the served
context of the model they train, and intermediate checkpoints are bounded (issue 18 item 5)."""
from __future__ import annotations

import pytest

from densepolicy.config import read_yaml
from densepolicy.paths import PROJECT_ROOT
from densepolicy.serving.models import load_registry

GPU_CONFIGS = sorted((PROJECT_ROOT / "TreeDPO" / "configs").glob("gpu_*.yaml"))


def test_there_are_gpu_configs():
    assert len(GPU_CONFIGS) >= 4


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.stem)
def test_cutoff_covers_the_served_context(path):
    """A record the server could produce (prompt + answer up to the served context) is never refused or cut."""
    args = read_yaml(path)
    entry = load_registry().models[args["model_name_or_path"]]
    assert entry.max_model_len, f"{args['model_name_or_path']} has no served max_model_len in configs/models.yaml"
    assert int(args["cutoff_len"]) >= entry.max_model_len


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.stem)
def test_periodic_checkpoints_are_bounded(path):
    args = read_yaml(path)
    if args.get("save_strategy", "steps") == "steps" and args.get("save_steps"):
        assert isinstance(args.get("save_total_limit"), int) and args["save_total_limit"] >= 1
