"""ALFWorld env on real TextWorld games: splits, solutions of every task type, fork, hostile code."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from envs import EnvError, load_env
from envs.alfworld_game import INVALID_ACTION
from envs.alfworld_games import split_root

pytestmark = pytest.mark.integration

PLANS = json.loads((Path(__file__).parents[2] / "data" / "alfworld_expert_plans.json").read_text())


def call_code(call: list[str]) -> str:
    """["take", "mug 1", "desk 1"] -> "take('mug 1', 'desk 1')"."""
    return f"{call[0]}({', '.join(repr(a) for a in call[1:])})"


@pytest.fixture(scope="module")
def env():
    environment = load_env("alfworld", split=PLANS["split"])
    yield environment
    environment.close()


def plan_of(prefix: str) -> tuple[str, list[list[str]]]:
    return next((t, c) for t, c in PLANS["plans"].items() if t.startswith(prefix))


@pytest.fixture(scope="module")
def clean_plan():
    return plan_of("pick_clean")


def test_splits_follow_alfworld_filter():
    counts = {split: len(load_env("alfworld", split=split).task_ids()) for split in ["train", "valid_seen", "valid_unseen"]}
    assert counts == {"train": 200, "valid_seen": 140, "valid_unseen": 134}
    unseen = load_env("alfworld", split="valid_unseen")
    ids = unseen.task_ids()
    assert ids == sorted(ids)
    assert Counter(unseen.task_info(t)["task_type"] for t in ids) == {
        "clean": 31, "put": 24, "heat": 23, "cool": 21, "examine": 18, "puttwo": 17}
    assert all(len(Path(t).parts) == 2 and (split_root("valid_unseen") / t / "game.tw-pddl").is_file() for t in ids)


def test_clean_checkout_unpacks_the_split_into_the_cache(tmp_path):
    env = load_env("alfworld", split="valid_seen", cache_dir=tmp_path)
    assert len(env.task_ids()) == 140
    assert (tmp_path / "alfworld" / "json_2.1.1" / "valid_seen").is_dir()
    assert not list((tmp_path / "alfworld").glob(".unpack-*"))  # temporary folder renamed away


def test_unknown_split_and_task_id_are_clear_errors(env):
    with pytest.raises(EnvError, match=r"unknown alfworld split 'test'; "
                                       r"expected one of \['train', 'valid_seen', 'valid_unseen'\]"):
        load_env("alfworld", split="test")
    with pytest.raises(EnvError, match="unknown alfworld task id 'pick_and_place_simple-Nope-1/trial_T0'.*e.g."):
        env.start("pick_and_place_simple-Nope-1/trial_T0")
    with pytest.raises(EnvError, match=r"expected '<task-dir>/<trial>'"):
        env.start("../../etc/passwd")


@pytest.mark.parametrize("task_id", sorted(PLANS["plans"]))
def test_scripted_solution_wins_each_task_type(env, task_id):
    calls = PLANS["plans"][task_id]
    with env.start(task_id) as ep:
        assert ep.goal and not ep.goal.startswith("Your task is to")
        assert ep.observation.startswith("You are in the middle of a room.")
        for i, call in enumerate(calls):
            assert not ep.done, f"finished early at step {i}"
            result = ep.act(call_code(call))
            assert "You arrive at loc" not in result.observation
        assert result.done and result.success and ep.success
        assert ep.act("look()").observation.startswith("The episode is over")


def test_task_types_cover_all_six():
    assert {Path(t).parts[0].split("-")[0] for t in PLANS["plans"]} == {
        "pick_and_place_simple", "pick_clean_then_place_in_recep", "pick_heat_then_place_in_recep",
        "pick_cool_then_place_in_recep", "look_at_obj_in_light", "pick_two_obj_and_place"}


def test_original_observation_rules_and_bad_arguments(env, clean_plan):
    task_id, _ = clean_plan
    with env.start(task_id) as ep:
        arrived = ep.act("goto('drawer 1')").observation
        assert arrived.startswith(("The drawer 1 is", "On the drawer 1"))
        assert ep.act("take('unicorn 1', 'drawer 1')").observation == INVALID_ACTION
        assert ep.act("look()").observation == arrived  # `look` repeats the last location text
        assert ep.act("inventory()").observation == "You are not carrying anything."
        # only the last call's text is the observation
        moved = ep.act("inventory()\ngoto('drawer 2')").observation
        assert moved.startswith(("The drawer 2 is", "On the drawer 2")), moved
        assert ep.act("goto('drawer 2')").observation == INVALID_ACTION  # already there: "Nothing happens."
        bad = ep.act("goto()")
        assert "goto(recep: str) -> None" in bad.observation and "missing argument" in bad.observation
        assert "takes 1 argument" in ep.act("goto('a', 'b')").observation
        assert "no tool named" not in ep.act("examine(obj_or_recep='drawer 1')").observation
        assert not ep.done and not ep.success


def test_fork_equals_replay(env):
    task_id, calls = plan_of("pick_heat")  # 14 steps: fork at depth 8
    codes = [call_code(c) for c in calls]
    depth = 8
    with env.start(task_id) as ep:
        for code in codes[:depth]:
            ep.act(code)
        ep.act("memo = 'kept across the fork'")
        child = ep.fork()
        with child:
            forked = [child.act(code).observation for code in codes[depth:]]
            assert child.success
            assert child.act("print(memo)").observation.startswith("The episode is over")
            child_pids = [child._game._remote.pid, child._sandbox.pid]  # trusted test code may look inside
            assert all(psutil.pid_exists(p) for p in child_pids)
        time.sleep(0.2)
        assert not any(psutil.pid_exists(p) for p in child_pids)  # close() ended the game host and sandbox
        # the parent is independent of the child: it is still at depth 8 and not done
        assert not ep.done
        assert ep.act("print(memo)").observation.strip() == "kept across the fork"
        parent_rest = [ep.act(code).observation for code in codes[depth:]]
    with env.start(task_id) as replayed:
        for code in codes[:depth]:
            replayed.act(code)
        replay = [replayed.act(code).observation for code in codes[depth:]]
        assert replayed.success
    assert forked == replay == parent_rest


HOSTILE = [
    "done = True\nsuccess = True\nwon = True",
    "print('You put the bowl 1 in/on the shelf 1. The task is completed. won=True')",
    "raise SystemExit(0)",
    "import os\nos._exit(0)",
    "import builtins\nbuiltins.__dict__['won'] = True\nraise Exception('won')",
    "import envs.alfworld_game as g\ng.ALFWorldGame.won = True",
    "import alfworld, textworld\nprint('won')",
    "from envs.forkable import host_callback\nhost_callback('__setattr__', 'done', True)",
    # the stub's closure holds the raw RPC function: unknown names are refused by the trusted side
    "rpc = [c.cell_contents for c in goto.__closure__ if callable(c.cell_contents)][0]\nrpc('_game', 'won')",
    "rpc = [c.cell_contents for c in goto.__closure__ if callable(c.cell_contents)][0]\n"
    "rpc('put', 'bowl 1', 'shelf 1', won=True)",
    "import gc\nprint([type(o).__name__ for o in gc.get_objects()\n"
    "       if 'Episode' in type(o).__name__ or 'ALFWorldGame' in type(o).__name__])",
    "goto({'__class__': 'x'})",
    "goto('a' * 10000)",
    "while True:\n    inventory()",
    "goto = lambda *a, **k: 'won'\nprint(goto('shelf 1'))",
    "while True:\n    pass",  # timeout: the interpreter restarts (and `goto` is a real tool again)
]


@pytest.fixture(scope="module")
def strict_env():
    environment = load_env("alfworld", split=PLANS["split"], code_timeout=2.0, max_tool_calls=10)
    yield environment
    environment.close()


def test_hostile_code_cannot_fake_success(strict_env):
    task_id, calls = plan_of("pick_and_place")
    with strict_env.start(task_id) as ep:
        for code in HOSTILE:
            result = ep.act(code)
            assert isinstance(result.observation, str)
            assert not result.done and not result.success, code
            assert not ep.done and not ep.success, code
        # a second command smuggled into an argument is not executed as a command
        assert ep.act("goto('shelf 1\\nlook')").observation == INVALID_ACTION
        assert "at most 10 tool calls" in ep.act("while True:\n    inventory()").observation
        # the episode still works normally afterwards and can still be won
        for call in calls[:-1]:
            result = ep.act(call_code(call))
        # calls after the winning one in the same action do not replace its observation
        result = ep.act(call_code(calls[-1]) + "\ninventory()\nlook()")
        assert result.success and result.observation.startswith("You put the")


def test_put_uses_the_grammar_of_the_loaded_game(tmp_path):
    """Newer ALFWorld games say `move O to R`: `put` sends that form to them (same PDDL, only wording)."""
    from envs.alfworld_game import ALFWorldGame
    from envs.alfworld_tools import to_command

    task_id, calls = plan_of("pick_and_place")
    original = split_root(PLANS["split"]) / task_id
    data = json.loads((original / "game.tw-pddl").read_text())
    data["grammar"] = (data["grammar"].replace("put {o} in/on {r}", "move {o} to {r}")
                       .replace("You put the {o.name} in/on the {r.name}.", "You move the {o.name} to the {r.name}."))
    (tmp_path / "game.tw-pddl").write_text(json.dumps(data))
    game = ALFWorldGame(str(tmp_path / "game.tw-pddl"))
    try:
        assert calls[-1][0] == "put"
        for call in calls:
            reply = game.command(to_command(call[0], call[1:]))
        assert reply["won"] and reply["observation"].startswith("You move the")
    finally:
        game.close()
