"""`make demo`'s screen: candidate train tasks are rolled out by the warm start, and the trees grow on the ones
with mixed outcomes first (then the always solved, then the never solved), with the same seeds every run.

Launcher and server are replaced by synthetic result files (tests/harness/loop_fakes.py); the outcomes of the
screen rollouts are read back through the real merge-file reader."""
import json

import pytest

from densepolicy.config import ConfigError, load_config
from densepolicy.demo import Demo, DemoConfig
from densepolicy.loop_stages import LoopStages, ScreenResult, StageError
from densepolicy.paths import PROJECT_ROOT
from tests.harness.loop_fakes import OfflineStages

CANDIDATES = ["BabyAI-GoToRedBall-v0:1", "BabyAI-GoToRedBall-v0:2", "BabyAI-GoToRedBall-v0:3",
              "BabyAI-GoToRedBall-v0:4"]


class Stages(OfflineStages, LoopStages):
    def prepare_dataset(self, *args):
        self.calls.append(("prepare_dataset",))

    def train(self, config, dataset, model, out, overrides, data_dir=None):
        self.calls.append(("train",))
        out.mkdir(parents=True, exist_ok=True)


def test_screen_ranks_mixed_then_always_then_never_solved():
    result = ScreenResult({"never": 0, "mixed1": 1, "always": 2, "mixed2": 1}, rollouts=2)
    assert result.mixed() == ["mixed1", "mixed2"]
    assert result.ranked() == ["mixed1", "mixed2", "always", "never"]
    assert result.record(2) == {"candidates": 4, "rollouts_per_task": 2, "always_solved": 1, "never_solved": 1,
                                "mixed": 2, "trees": 2}


def test_demo_grows_trees_on_the_mixed_candidates_of_its_screen(tmp_path, capsys):
    cfg = load_config(DemoConfig, PROJECT_ROOT / "configs" / "demo.yaml", [
        f"output_dir={tmp_path / 'demo'}",
        f"datasets=[{{name: babyai, screen: {json.dumps(CANDIDATES)}, trees: 2, sample: [max_steps=8]}}]"])
    warm = str(tmp_path / "warm")

    def solved(model, task, seed):
        # candidate 1: always solved; 2: never; 3 and 4: in the first of two rollouts only
        if seed is None or model != warm:
            return False
        return task == CANDIDATES[0] or (task in CANDIDATES[2:] and seed == cfg.screen_seed)

    stages = Stages(tmp_path / "demo", tag="demo", n_stages=11, proc_per_server=2, tmux_start_id=0,
                    serving={}, sampler={}, solved=solved)
    assert Demo(cfg, warm_start=lambda overrides, log: tmp_path / "warm", stages=stages).main() == 0

    kinds = [c[0] for c in stages.calls if c[0] not in ("serve", "prepare_dataset", "train")]
    assert kinds[:3] == ["screen/sample0", "screen/sample1", "sample"]
    screens = [c[2]["babyai"] for c in stages.calls if c[0].startswith("screen/")]
    for k, sets in enumerate(screens):  # every rollout: the train split, the candidates, its own fixed seed
        assert "split=train" in sets and "in_context_number=0" in sets
        assert f"task_ids={json.dumps(CANDIDATES)}" in sets and f"seed={cfg.screen_seed + k}" in sets
    (sample,) = [c for c in stages.calls if c[0] == "sample"]
    assert f"task_ids={json.dumps(CANDIDATES[2:])}" in sample[2]["babyai"]  # the two mixed candidates
    assert "2 of 4 candidates mixed over 2 rollouts (1 always, 1 never solved); trees on 2" in capsys.readouterr().out


def test_the_evaluations_max_tasks_does_not_cut_the_screen(tmp_path):
    """The fresh-clone demo of 2026-12-04: 16 BabyAI candidates, but the demo's `evaluate` settings (which the
    screen reuses) say max_tasks=8, so only 8 were rolled out and the other 8 were counted as never solved."""
    stages = Stages(tmp_path / "run", tag="t", n_stages=1, proc_per_server=2, tmux_start_id=0, serving={},
                    sampler={}, solved=lambda model, task, seed: task == CANDIDATES[3] and seed == 7)
    (result,) = stages.screen("m", "url", {"babyai": CANDIDATES}, {"babyai": ["max_tasks=2", "split=train"]},
                              {"babyai": 2}, 0.7, 7).values()
    assert result.solved == {CANDIDATES[0]: 0, CANDIDATES[1]: 0, CANDIDATES[2]: 0, CANDIDATES[3]: 1}
    assert result.mixed() == [CANDIDATES[3]]  # the last candidate, beyond the evaluation's cap, was rolled out


def test_a_candidate_without_a_result_stops_the_screen_instead_of_counting_as_never_solved(tmp_path):
    class Dropping(Stages):
        def task_ids(self, name, settings, method="codeact_agent"):
            return super().task_ids(name, settings, method)[:-1]

    stages = Dropping(tmp_path / "run", tag="t", n_stages=1, proc_per_server=2, tmux_start_id=0, serving={},
                      sampler={}, solved=lambda model, task, seed: False)
    with pytest.raises(StageError, match=f"screen of babyai: 1 of 4 candidates have no result.*{CANDIDATES[3]}"):
        stages.screen("m", "url", {"babyai": CANDIDATES}, {"babyai": ["split=train"]}, {"babyai": 2}, 0.7, 7)


def test_screen_and_fixed_tree_tasks_are_refused_together(tmp_path):
    with pytest.raises(ConfigError, match="key.*datasets.babyai.screen.*task_ids"):
        load_config(DemoConfig, PROJECT_ROOT / "configs" / "demo.yaml", [
            f"datasets=[{{name: babyai, screen: {json.dumps(CANDIDATES)}, sample: ['task_ids=[\"x\"]']}}]"])
