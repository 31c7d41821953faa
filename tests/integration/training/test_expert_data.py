"""Expert trajectories for the SFT warm start (densepolicy/training/expert*, issue 10 item 1).

Fast tests: the GSM8K program builder, the BabyAI mission parser, config checks, overwrite refusal.
Integration tests (real envs, LLaMA-Factory): a small real build whose every trajectory replays to
success through `envs`, disjointness from every evaluation split (by content), LLaMA-Factory loading,
and determinism.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from densepolicy.config import ConfigError
from densepolicy.paths import data_dir, embedded_model_dir
from densepolicy.results_io import OutputExistsError
from densepolicy.training.expert import replay
from densepolicy.training.expert.babyai_plan import Description, Instruction, parse_mission, tool_call
from densepolicy.training.expert.gsm8k import annotation_program, expert_plan
from densepolicy.training.expert_data import (build_expert_dataset, candidate_tasks, load_expert_data_config,
                                              to_sharegpt)
from envs import load_env

SMALL = ["gsm8k=3", "babyai=2", "alfworld=1", "math=0", "seed=7"]


# ---- fast ---------------------------------------------------------------------------------------
def test_gsm8k_annotations_become_a_program_with_variables():
    row = {"question": "q", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
                                      "<<48+24=72>>72 clips altogether in April and May.\n#### 72"}
    assert annotation_program(row["answer"], "72") == (
        "clips_may = 48 / 2\nclips_altogether = 48 + clips_may\nprint(clips_altogether)")
    plan = expert_plan(row)
    assert plan.messages == ("Action:\nclips_may = 48 / 2\nclips_altogether = 48 + clips_may\n"
                             "print(clips_altogether)\nEnd Action", "Answer: 72")
    # the printed variable is the step whose result is the gold answer, not simply the last one
    assert annotation_program("a <<2*3=6>>6 b <<6+1=7>>7 c", "6") == "b = 2 * 3\nprint(b)"
    assert annotation_program("x <<2 x 3=6>>6. y <<$1,000-6=994>>994.", "994") == (
        "step1 = 2 * 3\nstep2 = 1000 - step1\nprint(step2)")


def test_gsm8k_unusable_solutions_give_no_plan():
    assert annotation_program("no annotations here", "5") is None
    assert annotation_program("a <<2*3=6>>6", "7") is None             # no step yields the gold
    assert annotation_program("a <<x+1=6>>6", "6") is None             # not plain arithmetic
    assert annotation_program("a <<__import__('os')=6>>6", "6") is None


def test_babyai_missions_parse_in_execution_order():
    red_ball, key = Description("red", "ball"), Description(None, "key")
    assert parse_mission("go to the red ball") == [Instruction("goto", red_ball)]
    assert parse_mission("go to a key and go to the ball after you go to the red ball and go to a key") == [
        Instruction("goto", red_ball), Instruction("goto", key), Instruction("goto", key),
        Instruction("goto", Description(None, "ball"))]
    assert parse_mission("open the red door, then pick up a key") == [
        Instruction("open", Description("red", "door")), Instruction("pickup", key)]
    assert parse_mission("put the blue key next to the grey box") == [
        Instruction("putnext", Description("blue", "key"), Description("grey", "box"))]
    assert parse_mission("dance with the red ball") is None
    assert tool_call("toggle and go through red closed door 1") == "toggle_and_go_through('red closed door 1')"
    assert tool_call("pickup grey key 2") == "pick_up('grey key 2')" and tool_call("pickup") == "pickup()"


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="'gsm8k' must be >= 0"):
        load_expert_data_config(["gsm8k=-1"])
    with pytest.raises(ConfigError, match="unknown key 'gsm8'"):
        load_expert_data_config(["gsm8=3"])
    cfg = load_expert_data_config(["alfworld=0", "babyai=5"])
    assert cfg.wanted() == {"gsm8k": 300, "babyai": 5} and cfg.name == "expert_sft"


def test_config_fills_the_expert_options_and_train_env_arguments():
    from densepolicy.training.expert_data import _env_kwargs

    cfg = load_expert_data_config(["babyai_train_seeds=3", "alfworld_max_steps=7", "babyai_bot=true"])
    options = cfg.options()
    assert (options.babyai_train_seeds, options.alfworld_max_steps, options.babyai_bot) == (3, 7, True)
    assert _env_kwargs(cfg, "babyai") == {"train_seeds_per_level": 3} and _env_kwargs(cfg, "gsm8k") == {}


@pytest.mark.parametrize("style", ["original", "compact"])
def test_expert_replay_uses_the_env_prompt_style(style):
    """The expert's BabyAI messages replayed on an env of each style give that style's prompt and observations
    (the warm start sees what the sampler with the same `prompt_style` will show it)."""
    from densepolicy.training.expert.babyai_plan import high_level_plan
    from densepolicy.training.expert.replay import action_message
    from agents.prompts import initial_messages

    env = load_env("babyai", split="train", prompt_style=style)
    plan = high_level_plan("BabyAI-OpenDoorLoc-v0", 2, budget=200)
    trajectory = replay(env, "BabyAI-OpenDoorLoc-v0:2", [action_message(tool_call(a)) for a in plan])
    assert trajectory.success and len(plan) >= 2
    with env.start("BabyAI-OpenDoorLoc-v0:2") as episode:
        expected = initial_messages(episode.goal, episode.observation, env.tools, False, None, style=style)
    assert trajectory.messages[0] == expected[0]
    observations = [m["content"] for m in trajectory.messages[2::2]]
    marker = "Available actions: [" if style == "original" else "Actions: "
    assert observations and all(marker in o for o in observations)


def test_refuses_to_overwrite_an_existing_dataset(tmp_path):
    (tmp_path / "expert_sft.json").write_text("[]")
    with pytest.raises(OutputExistsError, match="already exists"):
        build_expert_dataset(load_expert_data_config(SMALL), dataset_dir=tmp_path)
    assert (tmp_path / "expert_sft.json").read_text() == "[]"


def test_sharegpt_turns_alternate_and_end_with_the_assistant():
    chat = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert to_sharegpt(chat) == [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]
    with pytest.raises(ValueError, match="end with an assistant"):
        to_sharegpt(chat + [{"role": "user", "content": "u2"}])
    with pytest.raises(ValueError, match="expected 'user'"):
        to_sharegpt(chat[1:])


# ---- integration --------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _norm(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def evaluation_content() -> dict[str, set[str]]:
    """Every evaluation task by content, read straight from the data files (not through `expert.splits`)."""
    data = data_dir()
    from envs.alfworld_games import list_task_ids, split_root
    from envs.babyai_levels import LEVELS
    math5000 = _jsonl(data / "math" / "math_test5000.jsonl")
    return {
        "gsm8k": {_norm(r["question"]) for r in _jsonl(data / "gsm8k" / "test.jsonl")},
        "math": {_norm(r["problem"]) for r in _jsonl(data / "math" / "math500_test.jsonl")}
                | {_norm(r["problem"]) for r in math5000 if r.get("math500_unique_id") is not None},
        "alfworld": set(list_task_ids(split_root("valid_seen"))) | set(list_task_ids(split_root("valid_unseen"))),
        "babyai": {f"{level}:0" for level in LEVELS},
    }


def _content(env, task_id: str) -> str:
    if env.name == "gsm8k":
        return _norm(env.rows[int(task_id)]["question"])
    if env.name == "math":
        return _norm(env.rows[int(task_id)]["problem"])
    return task_id


@pytest.mark.integration
@pytest.mark.parametrize("env_name", ["gsm8k", "math", "alfworld", "babyai"])
def test_no_train_candidate_is_an_evaluation_task(env_name, evaluation_content):
    """Every task the builder may ever try (not only the ones a small build reaches) is outside every
    evaluation split, compared by content; and the exclusion really removes what it is given."""
    from densepolicy.training.expert.splits import evaluation_keys, task_key

    env = load_env(env_name, split="train")
    try:
        candidates = candidate_tasks(env, 42, evaluation_keys(env_name))
        assert len(candidates) > 100
        assert not {_content(env, t) for t in candidates} & evaluation_content[env_name]
        assert evaluation_keys(env_name) >= evaluation_content[env_name]
        first = candidates[0]
        assert first not in candidate_tasks(env, 42, {task_key(env, first)})
        assert candidate_tasks(env, 42, set()) == candidate_tasks(env, 42, set())  # seeded, stable
    finally:
        env.close()


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("expert")
    summary = build_expert_dataset(load_expert_data_config(SMALL), dataset_dir=out)
    return summary, json.loads((out / "expert_sft.json").read_text()), out


@pytest.mark.integration
def test_small_build_counts_summary_and_registration(small_build):
    summary, records, out = small_build
    assert summary.counts == {"gsm8k": 3, "alfworld": 1, "babyai": 2}
    assert all(summary.attempted[e] >= summary.counts[e] for e in summary.counts)
    assert [r["env"] for r in records] == ["gsm8k"] * 3 + ["alfworld"] + ["babyai"] * 2
    for env_name, stats in summary.token_stats.items():
        assert 0 < stats["median"] <= stats["max"] <= 2048, env_name
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["expert_sft"] == {"file_name": "expert_sft.json", "formatting": "sharegpt",
                                  "columns": {"messages": "conversations"}}
    written = json.loads((out / "expert_sft.summary.json").read_text())
    assert written["counts"] == summary.counts and written["config"]["seed"] == 7
    for record in records:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(t["value"].count("Action:") + t["value"].count("Answer:") == 1 for t in turns[1::2])
        assert "Here are examples" not in turns[0]["value"]  # no in-context examples in the prompt
    gsm8k = [r for r in records if r["env"] == "gsm8k"]
    assert all(r["conversations"][-1]["value"].startswith("Answer: ") for r in gsm8k)
    # rendered in the configured style, the sampler's default (compact): its instruction, tool lines, observations
    assert load_expert_data_config(SMALL).prompt_style == "compact"
    babyai = [r for r in records if r["env"] == "babyai"]
    for record in babyai:
        turns = record["conversations"]
        assert turns[0]["value"].startswith("Tools:\n- turn_left(): ") and "Signature:" not in turns[0]["value"]
        assert all(t["value"].splitlines()[-1].startswith("Actions: ") for t in turns[2:-1:2])
        assert not any("Available actions" in t["value"] for t in turns)


@pytest.mark.integration
def test_every_kept_trajectory_replays_to_success(small_build):
    """Replaying the stored assistant turns on a fresh episode gives exactly the stored user turns
    (prompt included) and ends in success: nothing in the dataset was typed by hand."""
    _summary, records, _out = small_build
    envs = {}
    try:
        for record in records:
            env = envs.get(record["env"]) or envs.setdefault(record["env"], load_env(
                record["env"], split="train", prompt_style=load_expert_data_config(SMALL).prompt_style))
            turns = record["conversations"]
            again = replay(env, record["task_id"], [t["value"] for t in turns[1::2]])
            assert again.success, (record["task_id"], again.error)
            assert [m["content"] for m in again.messages] == [t["value"] for t in turns], record["task_id"]
    finally:
        for env in envs.values():
            env.close()


@pytest.mark.integration
def test_small_build_is_disjoint_from_every_evaluation_split(small_build, evaluation_content):
    _summary, records, _out = small_build
    everything = set().union(*evaluation_content.values())
    for record in records:
        env = load_env(record["env"], split="train")
        try:
            assert _content(env, record["task_id"]) not in everything, record["task_id"]
            goal_line = record["conversations"][0]["value"].rsplit("accomplish the goal: ", 1)[1]
            if record["env"] == "gsm8k":
                assert _norm(goal_line) not in evaluation_content["gsm8k"]
        finally:
            env.close()


@pytest.mark.integration
def test_llamafactory_loads_the_multi_turn_dataset(small_build, tmp_path):
    """Real LLaMA-Factory (sft stage, template smollm2): one example per trajectory, every assistant
    turn trained (labels), user/observation turns masked."""
    _summary, records, out = small_build
    script = f"""
import json
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
from llamafactory.data import get_template_and_fix_tokenizer, get_dataset
args = dict(model_name_or_path={str(embedded_model_dir())!r}, stage="sft", do_train=True, finetuning_type="full",
            dataset="expert_sft", dataset_dir={str(out)!r}, template="smollm2", cutoff_len=4096,
            output_dir={str(tmp_path / 'out')!r}, overwrite_cache=True, report_to="none")
model_args, data_args, training_args, _, _ = get_train_args(args)
module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
ds = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["train_dataset"]
tok = module["tokenizer"]
print("RESULT" + json.dumps([tok.decode([t for t in ex["labels"] if t != -100]) for ex in ds]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads(result.stdout.split("RESULT", 1)[1])
    assert len(trained) == len(records)
    for text, record in zip(trained, records):
        # exactly the assistant turns (each closed by the template's end marker); prompt and observations masked
        assert text == "".join(turn["value"] + "<|im_end|>\n" for turn in record["conversations"][1::2])


@pytest.mark.integration
def test_same_config_gives_the_same_file(tmp_path):
    config = load_expert_data_config(["gsm8k=3", "babyai=2", "alfworld=0", "seed=11"])
    build_expert_dataset(config, dataset_dir=tmp_path / "a")
    build_expert_dataset(config, dataset_dir=tmp_path / "b")
    assert (tmp_path / "a" / "expert_sft.json").read_bytes() == (tmp_path / "b" / "expert_sft.json").read_bytes()
