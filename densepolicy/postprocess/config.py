"""Configs of the post-processing stage (`configs/postprocess.yaml`; override with `key=value`).

    cfg = load_config(PostprocessConfig, "configs/postprocess.yaml", ["pairs.thre_value=0.3"])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from densepolicy.config import help_field
from agents.tree_rules import PairRule
from envs.spec import EnvSpec, env_spec

ALFWORLD_TYPES = list(env_spec("alfworld").task_types)
"""ALFWorld's task types in table order (its env spec's)."""


@dataclass
class PairsConfig:
    """Pair extraction from tree dumps (`post_process_training_data.py --process_result`)."""

    thre_value: float = help_field(0.5, help="Minimum value gap between chosen and rejected sibling (original: 0.5).")
    thre_max: int = help_field(8, help="Cap of the visit threshold min(floor(2**avg remaining depth), thre_max).")
    visit_counting: Literal["fixed", "faithful"] = help_field(
        "fixed", help="'fixed' = finished runs through the node; 'faithful' = the original's 2k-1 counting "
                      "(called 'runs' / 'original' before; the old names are refused).")
    arithmetic: Literal["fixed", "faithful"] = help_field(
        "fixed", help="'fixed' = node value as a plain mean, values within 1e-9 equal (also in the gap test); "
                      "'faithful' = the original's np.mean in label order and exact comparisons (bit for bit).")
    histogram: bool = help_field(True, help="Write a PNG histogram of selected pairs per task.")

    def __post_init__(self) -> None:
        if not 0 < self.thre_value <= 1:
            raise ValueError(f"key 'pairs.thre_value' must be in (0, 1], got {self.thre_value}")
        if self.thre_max < 1:
            raise ValueError(f"key 'pairs.thre_max' must be >= 1, got {self.thre_max}")

    def rule(self) -> PairRule:
        return PairRule(self.thre_value, self.thre_max, self.visit_counting, self.arithmetic)


@dataclass
class Budget:
    """Pair budget of one task group: keep the `tasks` tasks with most pairs, then `pairs` pairs in total."""

    pairs: int = help_field(help="Total pairs of the group after subsampling.")
    tasks: int = help_field(help="Number of tasks kept (those with the most selected pairs).")

    def __post_init__(self) -> None:
        if self.pairs < 1 or self.tasks < 1:
            raise ValueError(f"budget pairs/tasks must be >= 1, got pairs={self.pairs} tasks={self.tasks}")


@dataclass
class MergePairsConfig:
    """Combining several pairs CSVs with per-group budgets (`--merge_all_pairs`)."""

    budgets: dict[str, Budget] = help_field(
        {"math": {"pairs": 22331, "tasks": 2334}, "alfworld_put": {"pairs": 1170, "tasks": 24},
         "alfworld_cool": {"pairs": 665, "tasks": 20}, "babyai": {"pairs": 908, "tasks": 19}},
        help="Group -> {pairs, tasks}. A group is '<dataset>_<task_type>' if such a key exists, else '<dataset>'.")
    unbudgeted: Literal["keep", "drop"] = help_field(
        "keep", help="What to do with groups that have no budget: keep all their selected pairs, or drop them.")
    seed: int = help_field(42, help="Seed of the per-task subsampling.")

    def __post_init__(self) -> None:
        self.budgets = {k: (Budget(**v) if isinstance(v, dict) else v) for k, v in self.budgets.items()}


@dataclass
class DatasetConfig:
    """LLaMA-Factory dataset writing (`prepare_dataset.py`)."""

    model: str = help_field("", help="Tokenizer for the length filter: a configs/models.yaml name or a model "
                            "directory; '' = the registry default (embedded SmolLM2-135M-Instruct).")
    cutoff_len: int = help_field(4096, help="Drop pairs whose prompt+chosen or prompt+rejected exceeds this many tokens.")
    output_dir: str = help_field("TreeDPO/data", help="Where the JSON and dataset_info.json live.")
    seed: int = help_field(42, help="Seed for mixing other datasets.")

    def __post_init__(self) -> None:
        if self.cutoff_len < 16:
            raise ValueError(f"key 'dataset.cutoff_len' must be >= 16, got {self.cutoff_len}")


@dataclass
class ScoresConfig:
    """Score tables (`post_process_test_result.py --see_score`)."""

    max_trial: int = help_field(10, help="Largest answer-attempt budget t of acc@t for math datasets.")
    table_trials: list[int] = help_field([1, 4, 8, 10], help="Columns of the printed math table (Table 1 layout).")
    alfworld_types: list[str] = help_field(ALFWORLD_TYPES, help="ALFWorld task types, in table order.")

    def __post_init__(self) -> None:
        if self.max_trial < 1:
            raise ValueError(f"key 'scores.max_trial' must be >= 1, got {self.max_trial}")
        bad = [t for t in self.table_trials if not 1 <= t <= self.max_trial]
        if bad:
            raise ValueError(f"key 'scores.table_trials' has {bad} outside 1..max_trial={self.max_trial}")

    def task_types(self, spec: EnvSpec) -> list[str]:
        """The type columns of an env with task types: `alfworld_types` for ALFWorld, the spec's otherwise."""
        return list(self.alfworld_types) if spec.name == "alfworld" else list(spec.task_types)


@dataclass
class PostprocessConfig:
    """Everything the three post-processing scripts read from configs/postprocess.yaml."""

    preset: Literal["none", "paper"] = help_field(
        "none", help="paper: the original's behaviour (pairs.visit_counting=faithful, pairs.arithmetic=faithful); "
                     "keys given on the command line win over the preset (docs/deviations.md).")
    pairs: PairsConfig = field(default_factory=PairsConfig, metadata={"help": "pair extraction"})
    merge_all_pairs: MergePairsConfig = field(default_factory=MergePairsConfig, metadata={"help": "pair budgets"})
    dataset: DatasetConfig = field(default_factory=DatasetConfig, metadata={"help": "LLaMA-Factory dataset"})
    scores: ScoresConfig = field(default_factory=ScoresConfig, metadata={"help": "score tables"})
