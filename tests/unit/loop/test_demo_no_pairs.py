"""`make demo` when tree sampling finds no pair: one line, no training, the evaluation still finishes, exit 0.

The launcher and the vLLM server are replaced by synthetic result files in the real formats; pairs,
the score table and the comparison run through the project's real commands.
"""
import pytest

from densepolicy.config import load_config
from densepolicy.demo import NO_PAIRS_MESSAGE, Demo, DemoConfig
from densepolicy.loop_stages import LoopStages
from densepolicy.paths import PROJECT_ROOT
from tests.harness.loop_fakes import OfflineStages


class Stages(OfflineStages, LoopStages):
    def prepare_dataset(self, *args):
        raise AssertionError("no pairs: the dataset must not be prepared")

    def train(self, *args):
        raise AssertionError("no pairs: DPO must not run")


@pytest.mark.parametrize("evaluate_base", [False, True])
def test_demo_without_pairs_skips_training_and_still_evaluates(tmp_path, capsys, evaluate_base):
    cfg = load_config(DemoConfig, PROJECT_ROOT / "configs" / "demo.yaml",
                      [f"output_dir={tmp_path / 'demo'}", f"evaluate_base={str(evaluate_base).lower()}",
                       "datasets=[{name: gsm8k}, {name: babyai}]"])
    stages = Stages(tmp_path / "demo", tag="demo", n_stages=10, proc_per_server=1, tmux_start_id=0,
                    serving={}, sampler={}, solved=lambda model, task: task in ("0", "BabyAI-GoToRedBall-v0:0"))
    built = []
    demo = Demo(cfg, warm_start=lambda overrides, log: built.append(overrides) or tmp_path / "warm", stages=stages)

    assert demo.main() == 0

    out = capsys.readouterr().out
    assert out.count(NO_PAIRS_MESSAGE) == 1
    assert "0 pairs (gsm8k 0, babyai 0)" in out
    kinds = [c[0] for c in stages.calls if c[0] != "serve"]
    assert kinds == ["sample", "eval_warm"] + (["eval_base"] if evaluate_base else [])
    # the warm-started model samples and is evaluated without in-context examples; the base keeps its prompt
    assert all(s[-1] == "in_context_number=0" for c in stages.calls[1:3] for s in c[2].values())
    assert [c[1] for c in stages.calls if c[0] == "serve"] == [str(tmp_path / "warm")] + (
        ["SmolLM2-135M-Instruct"] if evaluate_base else [])
    root = tmp_path / "demo"
    assert not (root / "trained_model").exists()
    table = (root / "comparison.md").read_text()
    assert "| warm-start | 3 | 1 | 33.3 |" in table and "warm+TreeDPO" not in table
    assert (root / "scores.md").exists() and (root / "comparison.png").exists()
    assert built == [[]]
