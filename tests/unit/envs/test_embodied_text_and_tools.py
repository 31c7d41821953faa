"""Fast unit tests of the ALFWorld/BabyAI text processing, tool binding and path planning."""
from __future__ import annotations

import pytest

from envs.alfworld_game import INVALID_ACTION, process_observation, split_banner
from envs import alfworld_games
from envs.alfworld_games import task_type
from envs.alfworld_tools import PARAMETERS as ALF_PARAMETERS
from envs.alfworld_tools import TOOLS as ALF_TOOLS
from envs.alfworld_tools import from_command, to_command
from envs.babyai_game import relative_position
from envs.babyai_levels import LEVELS, parse_task_id, split_task_ids
from envs.babyai_planner import FORWARD, LEFT, RIGHT, plan_path
from envs.base import EnvError
from envs.tool_episode import _error_line, bind_arguments

BANNER = ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, "
          "you see a bed 1, a desk 1.\n\nYour task is to: examine the mug with the desklamp.")


def test_banner_gives_initial_observation_and_goal():
    observation, goal = split_banner(BANNER)
    assert observation == "You are in the middle of a room. Looking quickly around you, you see a bed 1, a desk 1."
    assert goal == "examine the mug with the desklamp."


def test_observation_processing_matches_original():
    assert process_observation("You arrive at loc 14. On the bed 1, you see a book 1.") == "On the bed 1, you see a book 1."
    assert process_observation("Nothing happens.") == INVALID_ACTION
    assert process_observation("You open the drawer 1. The drawer 1 is open.") == "You open the drawer 1. The drawer 1 is open."


@pytest.mark.parametrize("command", ["go to desk 1", "take mug 1 from desk 1", "put mug 1 in/on shelf 2",
                                     "open drawer 3", "close drawer 3", "toggle desklamp 1", "clean mug 1 with sinkbasin 1",
                                     "heat apple 1 with microwave 1", "cool apple 1 with fridge 1", "use desklamp 1",
                                     "examine mug 1", "inventory", "look"])
def test_tool_command_round_trip(command):
    name, *args = from_command(command)
    assert name in ALF_PARAMETERS and len(args) == len(ALF_PARAMETERS[name])
    assert to_command(name, args) == command


def test_new_grammar_move_maps_to_put():
    assert from_command("move mug 1 to desk 1") == ["put", "mug 1", "desk 1"]
    assert to_command("put", ["mug 1", "desk 1"]) == "put mug 1 in/on desk 1"


def test_task_type_from_folder():
    assert task_type("pick_two_obj_and_place-Book-None-Desk-309/trial_T1") == "puttwo"
    assert task_type("pick_and_place_simple-Book-None-Desk-309/trial_T1") == "put"
    assert task_type("look_at_obj_in_light-Book-None-DeskLamp-302/trial_T1") == "examine"
    with pytest.raises(EnvError, match="expected a folder starting with"):
        task_type("slice_and_eat-Apple/trial_T1")


def test_a_split_unpacked_by_another_host_meanwhile_is_used(tmp_path, monkeypatch):
    """The unpack lock is a host-local flock: on a cache shared by hosts, two may unpack the same split at once;
    the one whose rename comes second uses the split the other put in place instead of failing."""
    import io
    import os
    import tarfile

    (tmp_path / "data" / "alfworld").mkdir(parents=True)
    with tarfile.open(tmp_path / "data" / "alfworld" / "valid_seen.tar.gz", "w:gz") as tar:
        member = tarfile.TarInfo("json_2.1.1/valid_seen/pick_and_place-x/trial_1/game.tw-pddl")
        member.size = 2
        tar.addfile(member, io.BytesIO(b"{}"))
    target = tmp_path / "cache" / "alfworld" / "json_2.1.1" / "valid_seen"
    real_rename = os.rename

    def other_host_first(src, dst):
        (target / "pick_and_place-x" / "trial_1").mkdir(parents=True)
        (target / "pick_and_place-x" / "trial_1" / "game.tw-pddl").write_text("{\"theirs\": 1}")
        real_rename(src, dst)

    monkeypatch.setattr(alfworld_games.os, "rename", other_host_first)
    assert alfworld_games.ensure_split_unpacked("valid_seen", tmp_path / "data", tmp_path / "cache") == target
    assert (target / "pick_and_place-x" / "trial_1" / "game.tw-pddl").read_text() == '{"theirs": 1}'
    assert not list(target.parent.parent.glob(".unpack-*"))  # our temporary copy is removed


def test_bind_arguments_accepts_positional_and_keyword():
    take = next(t for t in ALF_TOOLS if t.name == "take")
    assert bind_arguments(take, ("obj", "recep"), ["mug 1"], {"recep": "desk  1"}) == ["mug 1", "desk 1"]
    assert bind_arguments(take, ("obj", "recep"), [3, "desk 1"], {}) == ["3", "desk 1"]


@pytest.mark.parametrize("args,kwargs,reason", [
    ([], {}, "missing argument(s) obj, recep"),
    (["a", "b", "c"], {}, "takes 2 argument(s) but 3 were given"),
    (["a"], {"obj": "b"}, "argument 'obj' given twice"),
    (["a"], {"where": "b"}, "unexpected keyword argument 'where'"),
    ([["a"], "b"], {}, "must be strings"),
    ([True, "b"], {}, "must be strings"),
    (["", "b"], {}, "non-empty"),
])
def test_bind_arguments_explains_the_signature(args, kwargs, reason):
    take = next(t for t in ALF_TOOLS if t.name == "take")
    message = bind_arguments(take, ("obj", "recep"), args, kwargs)
    assert isinstance(message, str) and reason in message
    assert "take(obj: str, recep: str) -> None" in message


def test_error_line_takes_the_exception_of_the_last_traceback():
    output = ("hello\nTraceback (most recent call last):\n  File \"<stdin>\", line 1, in <module>\n"
              "NameError: name 'x' is not defined\n")
    assert _error_line(output) == "NameError: name 'x' is not defined"
    assert _error_line("KeyError printed by the code, not raised") == ""


def test_babyai_relative_positions():
    assert relative_position(3, 0) == "right in front of you 3 steps away"
    assert relative_position(1, -2) == "1 step in front of you and 2 steps to your left"
    assert relative_position(0, 1) == "1 step to your right"
    assert relative_position(-2, 0) == "2 steps behind you"


def test_plan_path_uses_only_seen_walkable_cells():
    free = ("empty", "", "")
    known = {(x, y): free for x in range(1, 4) for y in range(1, 4)}
    known[(2, 2)] = ("wall", "grey", "")
    known[(3, 3)] = ("ball", "red", "")
    # from (1,1) facing east (0) to face the ball at (3,3): east to (3,1)? -> must go around the wall
    path = plan_path(known, (1, 1), 0, (3, 3), arrive=False)
    assert path is not None
    pos, d = (1, 1), 0
    vec = ((1, 0), (0, 1), (-1, 0), (0, -1))
    for action in path:
        if action == LEFT:
            d = (d - 1) % 4
        elif action == RIGHT:
            d = (d + 1) % 4
        else:
            assert action == FORWARD
            pos = (pos[0] + vec[d][0], pos[1] + vec[d][1])
            assert known[pos] == free
    assert (pos[0] + vec[d][0], pos[1] + vec[d][1]) == (3, 3)
    assert len(path) == 4  # forward, forward, right, forward: shortest
    del known[(3, 2)], known[(2, 3)]  # both neighbours of the ball unknown -> no path
    assert plan_path(known, (1, 1), 0, (3, 3), arrive=False) is None


def test_babyai_task_ids_and_splits():
    assert len(LEVELS) == 40 and "BabyAI-GoToObjS6-v1" in LEVELS
    test_ids = split_task_ids("test")
    assert test_ids[0] == "BabyAI-GoToRedBallGrey-v0:0" and len(test_ids) == 40
    train_ids = split_task_ids("train", train_seeds_per_level=3)
    assert len(train_ids) == 120 and not set(train_ids) & set(test_ids)
    assert parse_task_id("BabyAI-GoToLocal-v0:17") == ("BabyAI-GoToLocal-v0", 17)  # not one of the 40: accepted
    for bad in ["BabyAI-GoToRedBall-v0", "BabyAI-GoToRedBall-v0:x", "BabyAI-Nope-v0:0", "MiniGrid-Empty-5x5-v0:0"]:
        with pytest.raises(EnvError, match="babyai"):
            parse_task_id(bad)
    assert len(split_task_ids("valid")) == 200 and not set(split_task_ids("valid")) & (set(train_ids) | set(test_ids))
    with pytest.raises(EnvError, match=r"expected one of \['train', 'valid', 'test'\]"):
        split_task_ids("dev")
