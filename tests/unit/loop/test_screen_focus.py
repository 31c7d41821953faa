"""The focused screen's second pass (`densepolicy.experiment.focus_candidates`): which task types it draws from."""
from densepolicy.config import load_config
from densepolicy.experiment import Experiment, ExperimentConfig, focus_candidates, select_task_ids, split_task_types
from densepolicy.loop_stages import ScreenResult
from densepolicy.paths import PROJECT_ROOT

GOTO, OPEN, BOSS = "BabyAI-GoToRedBall-v0", "BabyAI-Open-v0", "BabyAI-BossLevel-v0"


def test_a_level_counts_as_mixed_when_its_rollouts_pooled_have_both_outcomes():
    # GoTo: one seed always solved, another never (no single mixed seed, but the level is in between);
    # Open: always solved; Boss: never solved
    first = ScreenResult({f"{GOTO}:1": 2, f"{GOTO}:2": 0, f"{OPEN}:1": 2, f"{OPEN}:3": 2, f"{BOSS}:4": 0}, 2)
    chosen, types = focus_candidates("babyai", "train", first, 10, seed=7)
    assert types == [GOTO]
    assert len(chosen) == 10 and all(t.startswith(GOTO + ":") for t in chosen)
    assert not set(chosen) & set(first.solved)  # never a candidate of the first pass again
    assert chosen == focus_candidates("babyai", "train", first, 10, seed=7)[0]  # seeded
    assert chosen != focus_candidates("babyai", "train", first, 10, seed=8)[0]


def test_the_pool_is_capped_by_the_unscreened_seeds_of_the_mixed_levels():
    first = ScreenResult({f"{GOTO}:1": 1}, 2)  # 25 train seeds per level, one screened
    chosen, _ = focus_candidates("babyai", "train", first, 100, seed=0)
    assert chosen == [f"{GOTO}:{s}" for s in range(2, 26)]


def test_an_env_without_task_types_has_nothing_to_focus_on():
    ids = select_task_ids("gsm8k", "train", 4, seed=0)
    assert all(kind is None for kind in split_task_types("gsm8k", "train").values())
    assert focus_candidates("gsm8k", "train", ScreenResult(dict(zip(ids, (0, 1, 2, 1))), 2), 10, seed=0) == ([], [])


def test_the_first_pass_keeps_at_least_one_candidate(tmp_path):
    def shares(screen_tasks, focus):
        cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
            f"output_dir={tmp_path}", f"datasets=[{{name: babyai, screen_tasks: {screen_tasks}, screen_samples: 2,"
            f" screen_focus: {focus}}}]"])
        exp = Experiment(cfg, warm_start=lambda overrides, log: tmp_path / "warm")
        return exp.focus_share(cfg.datasets[0])
    assert shares(160, 0.5) == 80 and shares(160, 0.0) == 0
    assert shares(1, 0.9) == 0 and shares(2, 0.9) == 1  # round(0.9) and round(1.8) would leave no first pass
