"""One real LLaMA-Factory DPO run shared by the tests of its outputs (training costs ~30 CPU-seconds per run)."""
from __future__ import annotations

import pytest

from densepolicy.training.train import TrainResult, train
from tests.harness.treedpo_helpers import TINY_DPO_OVERRIDES, write_dataset


@pytest.fixture(scope="session")
def tiny_dpo_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """cpu_tiny (through the lf_fast plugin, its default): 3 full-DPO steps on 4 tiny pairs written by
    prepare_dataset (`tiny_tree_dpo`), then LLaMA-Factory's evaluation on 3 held-out pairs (`tiny_heldout`), as
    `make experiment` scores the pairs of held-out tasks. The model is `<root>/model`; the data `<root>/data`."""
    root = tmp_path_factory.mktemp("tiny_dpo")
    write_dataset(root / "data", "tiny_tree_dpo", n=4, via_prepare=True)
    write_dataset(root / "data", "tiny_heldout", n=3, seed=1)
    return train("cpu_tiny", dataset="tiny_tree_dpo", dataset_dir=root / "data", output_dir=root / "model",
                 overrides=TINY_DPO_OVERRIDES, progress=False)
