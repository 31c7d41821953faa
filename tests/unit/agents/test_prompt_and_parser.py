"""CodeAct prompt layout (docs/original.md §2.1-2.2) and the parser rules (docs/original.md §2.3)."""
import pytest

from agents.incontext import example_pool
from agents.parser import INVALID_BOTH, INVALID_NONE, REMINDER_ANSWERS, REMINDER_ACTIONS, parse_generation
from agents.prompts import EXAMPLES_HEADER, GOAL_PREFIX, SEPARATOR, SEPARATOR_MARKER, STATE_PREFIX, initial_messages
from agents.runtime import restore_end_action
from envs.base import Tool


def test_parser_rules_in_order():
    assert parse_generation("Thought: x\nAction:\nprint(1)\nEnd Action\ntrailing").content == "print(1)"
    both = parse_generation("Action: print(1) End Action\nAnswer: 2")
    assert (both.kind, both.feedback) == ("invalid", INVALID_BOTH)
    assert parse_generation("I think 4").feedback == INVALID_NONE
    ans = parse_generation("Answer: 42 \n")
    assert (ans.kind, ans.content, ans.reminder) == ("answer", "42", "")
    two = parse_generation("Answer: 3\nAnswer: 4")
    assert (two.content, two.reminder) == ("3", REMINDER_ANSWERS)
    acts = parse_generation("Action: a()\nAction: b()")
    assert (acts.kind, acts.content, acts.reminder) == ("action", "a()", REMINDER_ACTIONS)


def test_end_action_restored_only_when_cut_by_stop():
    assert restore_end_action("Action:\nprint(1)\n", "stop", "End Action").endswith("print(1)\nEnd Action")
    # the model's whitespace before the cut stop string is kept exactly (issue 18 item 6)
    assert restore_end_action("Action:\nprint(1)  ", "stop", "End Action") == "Action:\nprint(1)  End Action"
    assert restore_end_action("Action:\nprint(1)\n\n", "stop", "End Action") == "Action:\nprint(1)\n\nEnd Action"
    assert restore_end_action("Action: print(1) ", "stop", "End Action") == "Action: print(1) End Action"
    assert restore_end_action("Action:\nprint(1)\n", "stop", None) == "Action:\nprint(1)\n"  # model's own end
    assert restore_end_action("Action:\nprint(1)", "length") == "Action:\nprint(1)"
    assert restore_end_action("Answer: 3", "stop") == "Answer: 3"


def test_gsm8k_prompt_has_eight_examples_as_real_turns():
    pool = example_pool("gsm8k")
    assert len(pool) == 8 and len(example_pool("math")) == 1 and example_pool("alfworld") == []
    msgs = initial_messages("What is 2+2?", "", [], True, "number", pool)
    assert all(m["role"] in ("user", "assistant") for m in msgs)  # never a system message
    assert [m["role"] for m in msgs[:2]] == ["user", "assistant"]
    assert all(msgs[i]["role"] != msgs[i + 1]["role"] for i in range(len(msgs) - 1))
    assert msgs[0]["content"].count(EXAMPLES_HEADER.strip()) == 1
    assert sum(m["content"].count(SEPARATOR_MARKER) for m in msgs) == 8
    assert msgs[-1]["content"].endswith(SEPARATOR + GOAL_PREFIX + "What is 2+2?")
    assert sum(len(ex.turns) for ex in pool) * 2 + 1 == len(msgs)
    assert "Please ONLY output the answer" in msgs[0]["content"]


def test_training_prompt_and_tools_and_state():
    tools = [Tool("goto", "Go to a receptacle.", "goto(recep: str) -> None")]
    msgs = initial_messages("put a mug in the sink", "You are in a room.", tools, False, None)
    assert len(msgs) == 1
    text = msgs[0]["content"]
    assert "[1] goto: Go to a receptacle.\n    Signature: goto(recep: str) -> None" in text
    assert text.endswith(STATE_PREFIX + "You are in a room.\n" + GOAL_PREFIX + "put a mug in the sink")
    assert "Answer:" not in text.split("Now, let's get started!")[1]


@pytest.mark.integration
@pytest.mark.parametrize("dataset", ["gsm8k", "math"])
def test_in_context_observations_are_what_the_real_sandbox_prints(dataset):
    """Replaying each example's actions in the real math sandbox gives exactly the shown observations."""
    from agents.runtime import execute_generation
    from envs import load_env

    env = load_env(dataset, split="test")
    try:
        for example in example_pool(dataset):
            with env.start(env.task_ids()[0]) as episode:
                for assistant, observation in example.turns[:-1]:
                    assert execute_generation(episode, assistant, True).observation == observation
            assert example.turns[-1] == (example.turns[-1][0], "Your answer is correct.")
            assert example.turns[-1][0].startswith("Answer: ")
    finally:
        env.close()
