"""Prompt styles (`prompt_style`): `original` is the original's text byte for byte (`preset=paper`); `compact`
carries the same protocol and the same BabyAI information in far fewer tokens (issue 17 item 1).

tests/data/original_prompts.json was rendered by the code before the compact style existed (commit f6e3248)."""
from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path

import pytest

from agents.incontext import example_pool
from agents.prompts import (EXAMPLES_HEADER, GOAL_PREFIX, SEPARATOR, SEPARATOR_MARKER, STATE_PREFIX,
                            initial_messages)
from agents.runtime import WorkerContext
from densepolicy.paths import embedded_model_dir
from densepolicy.sampling.config import resolve_sampler_config
from densepolicy.sampling.shard_identity import settings_diffs, shard_settings
from densepolicy.sampling.worker import load_task_env
from envs import EnvError, load_env
from envs.alfworld_tools import TOOLS as ALFWORLD_TOOLS
from envs.babyai_env import compact_actions, parse_compact_actions, tool_of_action
from envs.babyai_levels import LEVELS

GOLDEN = json.loads((Path(__file__).parents[2] / "data" / "original_prompts.json").read_text())
BABYAI_TASK = "BabyAI-GoToLocalS8N7-v0:3"
BABYAI_STEPS = ["turn_left()", "go_to('red key 1')", "drop()", "go_to('purple unicorn 1')"]
# real train tasks of several levels (rooms with few and many objects, doors, locked doors)
BABYAI_TASKS = ["BabyAI-OpenDoorsOrderN4Debug-v0:6", "BabyAI-FindObjS7-v0:22", "BabyAI-GoToLocalS8N7-v0:3",
                "BabyAI-PickupLoc-v0:5", "BabyAI-UnlockLocalDist-v0:4", "BabyAI-PutNextLocalS6N4-v0:2",
                "BabyAI-KeyCorridorS6R3-v0:1", "BabyAI-SynthLoc-v0:8"]


NAME = re.compile(r"((?:red|green|blue|purple|yellow|grey) (?:(?:open|closed|locked) door|ball|box|key|goal|lava) \d+)")


def _original_calls(observation: str) -> list[str]:
    match = re.search(r"Available actions: \[(.*)\]", observation)
    assert match, observation
    calls = []
    for action in json.loads(f"[{match.group(1)}]"):
        name, argument = tool_of_action(action)
        calls.append(f"{name}()" if argument is None else f"{name}({argument!r})")
    return sorted(calls)


# ---- original = the original's text -----------------------------------------------------------------
def test_original_style_renders_the_text_of_before_byte_for_byte():
    assert initial_messages("What is 2+2?", "", [], True, "number", example_pool("gsm8k")[:2]) == GOLDEN["gsm8k_icl2"]
    assert initial_messages("Simplify $x+x$.", "", [], True, "text", example_pool("math")[:1]) == GOLDEN["math_icl1"]
    assert initial_messages("put a mug in the sink", "You are in a room.", ALFWORLD_TOOLS, False,
                            None) == GOLDEN["alfworld_tools"]
    env = load_env("babyai", split="train")  # the env's default: the original rendering
    with env.start(BABYAI_TASK) as ep:
        assert initial_messages(ep.goal, ep.observation, env.tools, False, None) == GOLDEN["babyai_GoToLocalS8N7_3"]
        assert [ep.act(c).observation for c in BABYAI_STEPS] == GOLDEN["babyai_GoToLocalS8N7_3_steps"]


def test_preset_paper_selects_the_original_text_and_compact_is_the_default():
    paper = resolve_sampler_config("codeact_agent_tree", "babyai", ["preset=paper"])
    default = resolve_sampler_config("codeact_agent_tree", "babyai")
    assert (paper.prompt_style, default.prompt_style) == ("original", "compact")
    assert resolve_sampler_config("codeact_agent_tree", "babyai", ["preset=paper", "prompt_style=compact"]
                                  ).prompt_style == "compact"  # an explicit key wins over the preset
    for cfg, same in ((paper, True), (default, False)):
        env = load_task_env(cfg)
        ctx = WorkerContext(cfg=cfg, env=env, client=None, context_length=0, stop=[])
        try:
            with env.start(BABYAI_TASK) as ep:
                messages, train_prompt = ctx.opening(ep, BABYAI_TASK)
                steps = [ep.act(c).observation for c in BABYAI_STEPS]
            assert (messages == GOLDEN["babyai_GoToLocalS8N7_3"]) is same
            assert (steps == GOLDEN["babyai_GoToLocalS8N7_3_steps"]) is same
            assert train_prompt == messages  # BabyAI has no in-context examples
        finally:
            ctx.executor.shutdown()
            env.close()
    with pytest.raises(EnvError, match="unknown prompt style 'short'"):
        load_env("babyai", prompt_style="short")


def test_a_shard_recorded_before_prompt_style_existed_counts_as_original():
    cfg = resolve_sampler_config("codeact_agent_tree", "babyai")
    old = {k: v for k, v in shard_settings(cfg, "m").items() if k != "prompt_style"}
    assert settings_diffs(old, shard_settings(cfg, "m")) == ["prompt_style: 'original' -> 'compact'"]
    paper = resolve_sampler_config("codeact_agent_tree", "babyai", ["prompt_style=original"])
    assert settings_diffs(old, shard_settings(paper, "m")) == []


# ---- compact: same protocol ---------------------------------------------------------------------------
def test_compact_keeps_every_protocol_string_later_stages_search_for():
    msgs = initial_messages("What is 2+2?", "", [], True, "number", example_pool("gsm8k"), style="compact")
    assert [m["role"] for m in msgs[:2]] == ["user", "assistant"] and all(m["role"] != "system" for m in msgs)
    assert msgs[0]["content"].count(EXAMPLES_HEADER.strip()) == 1
    assert sum(m["content"].count(SEPARATOR_MARKER) for m in msgs) == 8
    assert msgs[-1]["content"].endswith(SEPARATOR + GOAL_PREFIX + "What is 2+2?")
    assert "e.g.\nAction:\n" in msgs[0]["content"] and "\nEnd Action\n" in msgs[0]["content"]
    assert "'Answer: your answer'" in msgs[0]["content"] and "number only" in msgs[0]["content"]
    env = load_env("babyai", split="train", prompt_style="compact")
    with env.start(BABYAI_TASK) as ep:
        (first,) = initial_messages(ep.goal, ep.observation, env.tools, False, None, style="compact")
        assert first["content"].endswith(STATE_PREFIX + ep.observation + "\n" + GOAL_PREFIX + ep.goal)
        # one line per tool, with its signature
        for tool in env.tools:
            assert f"\n- {tool.signature.removesuffix(' -> None')}: " in first["content"], tool.name
        assert "Answer:" not in first["content"]
    # the goal the fake servers and benchmarks read (GOAL_RE of benchmarks/bench_tree_sampler.py)
    assert re.search(r"You should perform actions to accomplish the goal: (.*)\Z", msgs[-1]["content"], re.S)


def test_compact_babyai_observation_allows_exactly_the_original_actions():
    """On every one of the 40 levels, a few random steps: the compact `Actions` line expands to the same tool
    calls as the original's `Available actions`, and names every object the original description names."""
    original, compact = load_env("babyai", split="train"), load_env("babyai", split="train", prompt_style="compact")
    rng, checked = random.Random(0), 0
    for level in LEVELS:
        with original.start(f"{level}:3") as a, compact.start(f"{level}:3") as b:
            call = "turn_left()"
            for _ in range(4):
                ra, rb = a.act(call), b.act(call)
                assert ra.done == rb.done and ra.success == rb.success
                if ra.done:
                    break
                names = NAME.findall(ra.observation.split("\nAvailable actions")[0])
                description, line = rb.observation.rsplit("\n", 1)
                assert all(f"{n} (" in description for n in names), (level, names, description)
                objects = NAME.findall(description)
                want = _original_calls(ra.observation)
                assert sorted(parse_compact_actions(line, objects)) == want, (level, line)
                checked += 1
                call = rng.choice(want)
    assert checked >= 120


def test_compact_actions_say_any_seen_only_when_nothing_is_missing():
    assert compact_actions(["turn left", "go to red ball 1", "pickup red ball 1"], ["drop"]) == (
        "Actions: turn_left(); go_to: any seen; pick_up: any seen")
    assert compact_actions(["go to red ball 1"], ["go to grey key 1", "pickup red ball 1"]) == (
        "Actions: go_to: 'red ball 1'")
    assert parse_compact_actions("Actions: turn_left(); go_to: any seen; pick_up: 'red ball 1'",
                                 ["red ball 1", "grey open door 1", "green goal 1"]) == [
        "turn_left()", "go_to('red ball 1')", "go_to('grey open door 1')", "go_to('goal')", "pick_up('red ball 1')"]


# ---- compact: shorter, by measured factors -------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    path = embedded_model_dir()
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer in {path} (make setup)")
    return transformers.AutoTokenizer.from_pretrained(str(path))


def _chat_tokens(tokenizer, messages) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_compact_babyai_prompt_is_less_than_half_as_long(tokenizer):
    """BabyAI train tasks, the expert's high-level plan as the steps: the first message (instruction, tool list,
    state, goal) and the observations, counted with SmolLM2's tokenizer. Measured: 718 -> 309 tokens (0.43x) and
    184 -> 90 tokens per observation (0.49x) on these tasks."""
    from densepolicy.training.expert.babyai_plan import high_level_plan, tool_call
    from envs.babyai_levels import parse_task_id

    sizes: dict[str, dict[str, list[int]]] = {}
    for style in ("original", "compact"):
        env = load_env("babyai", split="train", prompt_style=style)
        first, observations = [], []
        for task_id in BABYAI_TASKS:
            plan = high_level_plan(*parse_task_id(task_id), budget=200) or ["turn left", "move forward"]
            with env.start(task_id) as ep:
                first.append(_chat_tokens(tokenizer, initial_messages(ep.goal, ep.observation, env.tools, False,
                                                                      None, style=style)))
                for action in plan:
                    text = ep.act(tool_call(action)).observation
                    observations.append(len(tokenizer.encode(text, add_special_tokens=False)))
        sizes[style] = {"first": first, "observation": observations}
    ratio = {k: statistics.mean(sizes["compact"][k]) / statistics.mean(sizes["original"][k]) for k in sizes["compact"]}
    assert ratio["first"] <= 0.5, ratio
    assert ratio["observation"] <= 0.55, ratio
    assert all(c < o for c, o in zip(sizes["compact"]["first"], sizes["original"]["first"]))


def test_compact_gsm8k_instruction_is_shorter(tokenizer):
    """The GSM8K opening without in-context examples (the warm-started model's prompt): measured 0.73x. With the
    8 examples of the base model's config the examples dominate (about 1,740 of 1,814 tokens are the same)."""
    env = load_env("gsm8k", split="train")
    try:
        with env.start(env.task_ids()[0]) as ep:
            n = {style: _chat_tokens(tokenizer, initial_messages(ep.goal, ep.observation, [], True, "number",
                                                                 style=style)) for style in ("original", "compact")}
    finally:
        env.close()
    assert n["compact"] <= 0.8 * n["original"], n
