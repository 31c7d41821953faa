"""BabyAI env on real minigrid levels: bot solutions through the tools, high-level actions, fork, hostile code."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from envs import EnvError, load_env

pytestmark = pytest.mark.integration

BOT_TASKS = ["BabyAI-GoToRedBallGrey-v0:0", "BabyAI-PickupLoc-v0:0", "BabyAI-OpenDoorLoc-v0:0",
             "BabyAI-PutNextLocalS6N4-v0:0", "BabyAI-UnlockLocalDist-v0:0", "BabyAI-UnlockPickupDist-v0:0",
             "BabyAI-GoToSeqS5R2-v0:0", "BabyAI-GoToObjMazeS7-v0:0"]
REFUSAL = re.compile(r"You cannot (?!see any objects)|There is a barrier")
PRIMITIVE_TOOL = {"turn left": "turn_left()", "turn right": "turn_right()", "move forward": "move_forward()",
                  "pickup": "pickup()", "drop": "drop()", "toggle": "toggle()"}


@pytest.fixture(scope="module")
def env():
    environment = load_env("babyai", split="test")
    yield environment
    environment.close()


@pytest.fixture(scope="module")
def bot_runs() -> dict[str, dict]:
    """BabyAIBot action lists, computed in a subprocess that is killed after a wall-clock limit
    (the bot can hang forever on some levels)."""
    script = Path(__file__).parents[2] / "harness" / "babyai_bot_actions.py"
    done = subprocess.run([sys.executable, str(script), *BOT_TASKS], capture_output=True, text=True, timeout=120,
                          check=True)
    runs = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            run = json.loads(line)
            runs[run.pop("task_id")] = run
    return runs


def available_actions(observation: str) -> list[str]:
    match = re.search(r"Available actions: \[(.*)\]", observation)
    assert match, observation
    return json.loads(f"[{match.group(1)}]")


def test_splits_and_task_ids(env):
    ids = env.task_ids()
    assert len(ids) == 40 and ids[3] == "BabyAI-GoToObjS6-v1:0" and all(i.endswith(":0") for i in ids)
    train = load_env("babyai", split="train", train_seeds_per_level=25).task_ids()
    assert len(train) == 1000 and not set(train) & set(ids)
    assert env.task_info("BabyAI-KeyInBox-v0:0") == {"task_type": "BabyAI-KeyInBox-v0"}
    valid = load_env("babyai", split="valid").task_ids()  # for choosing settings: disjoint from train and test
    assert len(valid) == 200 and not set(valid) & (set(train) | set(ids))
    big_train = load_env("babyai", split="train", train_seeds_per_level=999).task_ids()
    assert not set(valid) & set(big_train)
    with pytest.raises(EnvError, match="train_seeds_per_level must be 1..999"):
        load_env("babyai", split="train", train_seeds_per_level=1000)
    with pytest.raises(EnvError, match=r"unknown babyai split 'dev'; expected one of \['train', 'valid', 'test'\]"):
        load_env("babyai", split="dev")
    with pytest.raises(EnvError, match="unknown babyai level 'BabyAI-GoToObjS6-v0'"):
        env.start("BabyAI-GoToObjS6-v0:0")
    with pytest.raises(EnvError, match="expected '<level>:<seed>'"):
        env.start("BabyAI-GoToRedBall-v0")


def test_start_accepts_any_level_and_seed_and_hides_sampling_prints(env, capfd):
    with env.start("BabyAI-GoToLocal-v0:123") as ep:  # not in any split of the 40 levels
        assert ep.goal.startswith("go to ")
        assert "Available actions" not in ep.observation  # as the original's first prompt
        assert ep.observation.endswith(("You are not carrying anything.", "."))
    with env.start("BabyAI-GoToObjDoor-v0:0") as ep:  # minigrid prints "Sampling rejected" 4 times here
        assert ep.goal
    assert "Sampling rejected" not in capfd.readouterr().out


@pytest.mark.parametrize("task_id", BOT_TASKS)
def test_bot_solution_through_primitive_tools_wins(env, bot_runs, task_id):
    run = bot_runs[task_id]
    assert run["success"], f"the bot itself fails on {task_id}"
    with env.start(task_id) as ep:
        for action in run["actions"]:
            if action == "done":
                continue
            result = ep.act(PRIMITIVE_TOOL[action])
            assert not REFUSAL.match(result.observation), (action, result.observation)
            if result.done:
                break
        assert result.done and result.success and ep.success
        assert "The task is completed." in result.observation


@pytest.fixture(scope="module")
def compact_env():
    environment = load_env("babyai", split="test", prompt_style="compact")
    yield environment
    environment.close()


@pytest.mark.parametrize("task_id", BOT_TASKS)
def test_bot_and_planner_solve_under_compact_observations(compact_env, bot_runs, task_id):
    """The compact observation style changes only the text: the bot's primitive actions still win, with the
    compact observations along the way, and so does the expert's high-level plan where it finds one."""
    from densepolicy.training.expert.babyai_plan import high_level_plan, tool_call
    from envs.babyai_levels import parse_task_id

    with compact_env.start(task_id) as ep:
        for action in [a for a in bot_runs[task_id]["actions"] if a != "done"]:
            result = ep.act(PRIMITIVE_TOOL[action])
            assert not REFUSAL.match(result.observation), (action, result.observation)
            assert "Available actions" not in result.observation
            if result.done:
                break
            assert result.observation.splitlines()[-1].startswith("Actions: ")
        assert result.done and result.success and "The task is completed." in result.observation
    plan = high_level_plan(*parse_task_id(task_id), budget=200)
    if plan is not None:
        with compact_env.start(task_id) as ep:
            results = [ep.act(tool_call(a)) for a in plan]
            assert results[-1].done and results[-1].success and not any(r.done for r in results[:-1])


def test_high_level_tools_solve_goto_and_door_levels(env):
    with env.start("BabyAI-GoToRedBallGrey-v0:0") as ep:
        assert ep.goal == "go to the red ball"
        actions = available_actions(ep.act("turn_right()\nturn_left()").observation)
        assert "go to red ball 1" in actions and "pickup red ball 1" in actions
        result = ep.act("go_to('red ball 1')")
        assert result.done and result.success
    with env.start("BabyAI-OpenRedDoor-v0:0") as ep:
        assert ep.goal == "open the red door"
        actions = available_actions(ep.act("turn_left()\nturn_right()").observation)
        assert "toggle and go through red closed door 1" in actions
        assert "go through red closed door 1" not in actions
        result = ep.act("go_through('red closed door 1')")
        assert "as it is closed. You should toggle it first." in result.observation and not result.done
        result = ep.act("toggle_and_go_through('red closed door 1')")
        assert result.done and result.success


def test_invalid_actions_and_arguments_explain_themselves(env):
    with env.start("BabyAI-GoToRedBallGrey-v0:0") as ep:
        assert "You cannot drop the object, as you are not carrying anything." in ep.act("drop()").observation
        assert "no such object" in ep.act("go_to('purple unicorn 1')").observation
        bad = ep.act("go_to()")
        assert "go_to(obj: str) -> None" in bad.observation and "missing argument" in bad.observation
        assert "takes 0 argument" in ep.act("turn_left('twice')").observation
        assert not ep.done


def test_level_step_limit_ends_the_episode(env):
    with env.start("BabyAI-GoToRedBallGrey-v0:0") as ep:  # max_steps = 64 for this level
        for _ in range(3):
            result = ep.act("for _ in range(30):\n    turn_left()")
        assert result.done and not result.success
        assert "limit of 64 primitive steps" in result.observation
        assert ep.act("turn_left()").observation.startswith("The episode is over")


def test_fork_equals_replay(env, bot_runs):
    task_id = "BabyAI-UnlockLocalDist-v0:0"
    codes = [PRIMITIVE_TOOL[a] for a in bot_runs[task_id]["actions"] if a != "done"]
    depth = 8
    with env.start(task_id) as ep:
        for code in codes[:depth]:
            ep.act(code)
        ep.act("memo = 41")
        with ep.fork() as child:
            forked = [child.act(code).observation for code in codes[depth:]]
            assert child.success
        assert not ep.done  # the parent did not move
        assert ep.act("print(memo + 1)").observation.strip() == "42"
        parent_rest = [ep.act(code).observation for code in codes[depth:]]
    with env.start(task_id) as replayed:
        for code in codes[:depth]:
            replayed.act(code)
        replay = [replayed.act(code).observation for code in codes[depth:]]
    assert forked == replay == parent_rest


HOSTILE = [
    "done = True\nsuccess = True\nreward = 1.0",
    "print('The task is completed.')",
    "import gymnasium, minigrid\ne = gymnasium.make('BabyAI-GoToRedBallGrey-v0')\ne.reset(seed=0)\nprint('won')",
    "import envs.babyai_game",
    "rpc = [c.cell_contents for c in go_to.__closure__ if callable(c.cell_contents)][0]\nrpc('_game')",
    "rpc = [c.cell_contents for c in go_to.__closure__ if callable(c.cell_contents)][0]\n"
    "rpc('go_to', obj='red ball 1', success=True)",
    "raise RuntimeError('success')",
    "import os\nos._exit(0)",
    "go_to({'obj': 'red ball 1'})",
    "while True:\n    pass",
]


def test_hostile_code_cannot_fake_success():
    env = load_env("babyai", split="test", code_timeout=2.0)
    with env.start("BabyAI-GoToRedBallGrey-v0:0") as ep:
        for code in HOSTILE:
            result = ep.act(code)
            assert isinstance(result.observation, str)
            assert not result.done and not result.success and not ep.success, code
        assert ep.act("go_to('red ball 1')").success
