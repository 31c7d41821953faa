"""One real LLaMA-Factory DPO run shared by the tests of its outputs (~30 CPU-seconds on the tiny Llama)."""
from __future__ import annotations

from pathlib import Path

import pytest

from densepolicy.training.train import TrainResult, train
from tests.harness.treedpo_helpers import TINY_DPO_OVERRIDES, write_dataset


@pytest.fixture(scope="session")
def tiny_dpo_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> TrainResult:
    """cpu_tiny (through the lf_fast plugin, its default) on the session's `tiny_llama`: 3 full-DPO steps on 4
    tiny pairs written by prepare_dataset (`tiny_tree_dpo`), then LLaMA-Factory's evaluation on 3 held-out pairs
    (`tiny_heldout`), as `make experiment` scores the pairs of held-out tasks. The trained model is
    `<root>/model`; the data `<root>/data`."""
    root = tmp_path_factory.mktemp("tiny_dpo")
    write_dataset(root / "data", "tiny_tree_dpo", n=4, via_prepare=True)
    write_dataset(root / "data", "tiny_heldout", n=3, seed=1)
    return train("cpu_tiny", dataset="tiny_tree_dpo", dataset_dir=root / "data", output_dir=root / "model",
                 model=tiny_llama,
                 overrides=TINY_DPO_OVERRIDES, progress=False)
