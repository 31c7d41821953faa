"""The CodeAct prompt: instruction text, in-context example layout, separator and goal line (docs/original.md §2.1-2.2).

The conversation is a plain list of user/assistant messages; no system message is ever sent.
Later stages search for `SEPARATOR_MARKER` and `GOAL_PREFIX`, so those strings are protocol.

Two styles (`envs.base.PROMPT_STYLES`, the sampler's `prompt_style`): `original` is the original's wording
(`preset=paper`), `compact` the same protocol in a few lines: a short instruction and one line per tool
(`- go_to(obj: str): walk to ...`). Both keep `EXAMPLES_HEADER`, `SEPARATOR`, `STATE_PREFIX` and `GOAL_PREFIX`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envs.base import PROMPT_STYLES, Tool

EXAMPLES_HEADER = "\nHere are examples:\n"
SEPARATOR = ("\n\n\nNow, let's move on to the next task. "
             "The instructions for this task are the same as the previous ones.\n")
SEPARATOR_MARKER = "Now, let's move on to the next task."
STATE_PREFIX = "\nHere is the environment state: "
GOAL_PREFIX = "You should perform actions to accomplish the goal: "

Message = dict  # {"role": "user" | "assistant", "content": str}


@dataclass(frozen=True)
class InContextExample:
    """A solved task shown to the model as real chat turns: question, then (assistant, user) turns."""

    question: str
    turns: tuple[tuple[str, str], ...]


def _tool_list(tools: Sequence[Tool], style: str = "original") -> str:
    if style == "compact":
        return "".join(f"- {_short_signature(t.signature)}: {t.brief or _first_sentence(t.description)}\n"
                       for t in tools)
    return "".join(f"[{i}] {t.name}: {t.description}\n    Signature: {t.signature}\n"
                   for i, t in enumerate(tools, 1))


def _short_signature(signature: str) -> str:
    """`go_to(obj: str) -> None` -> `go_to(obj: str)` (a return value is kept when there is one)."""
    return signature[:-len(" -> None")] if signature.endswith(" -> None") else signature


def _first_sentence(text: str) -> str:
    head = text.split(". ", 1)[0].rstrip(".")
    return head[:1].lower() + head[1:]


def check_style(style: str) -> str:
    """`style` if it is one of PROMPT_STYLES, else a ValueError naming the known ones."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {list(PROMPT_STYLES)}")
    return style


def compact_instruction_text(tools: Sequence[Tool], requires_answer: bool, answer_type: str | None,
                             action_type: str = "python") -> str:
    """The instruction of the compact style: the protocol of `instruction_text` in a few lines."""
    parts: list[str] = []
    if tools:
        parts.append("Tools:\n" + _tool_list(tools, "compact"))
    if tools and not requires_answer:
        example = ("Action: tool_name argument_1 End Action" if action_type == "text"
                   else "Action: tool_name(argument_1)\nEnd Action")
        parts.append(f"Reply with one tool call per message (a 'Thought: ...' first is optional), e.g.\n{example}\n"
                     "Continue until the goal is accomplished.\n")
        return "".join(parts)
    parts.append(("Write Python code that calls the tools" if tools else "Solve the task with Python code")
                 + " (loops and variables are allowed) and print the values you need, e.g.\n"
                   "Action:\nx = 3 * 4\nprint(x)\nEnd Action\n"
                   "You may write 'Thought: ...' first. I run the code and send back what it printed. "
                   "Each message holds either 'Action:' or the final 'Answer: your answer', never both.\n")
    if answer_type == "number":
        parts.append("Answer with a number only, without units or words.\n")
    parts.append("If I say your answer is incorrect, revise your code and try again.\n")
    return "".join(parts)


def instruction_text(tools: Sequence[Tool], requires_answer: bool, answer_type: str | None,
                     action_type: str = "python", style: str = "original") -> str:
    """The task-independent instruction that opens the first user message (docs/original.md §2.2, paraphrased);
    `style="compact"` gives `compact_instruction_text`."""
    if check_style(style) == "compact":
        return compact_instruction_text(tools, requires_answer, answer_type, action_type)
    parts: list[str] = []
    if tools:
        parts.append("You have access to the following tools:\n" + _tool_list(tools))
        if requires_answer:
            parts.append(
                "\nYou can write a block of Python code that calls these tools; loops and variables are "
                "allowed. Print the result you need. Put the code between 'Action:' and 'End Action', e.g.\n"
                "Action:\nresult = tool_name(argument_1)\nprint(result)\nEnd Action\n")
        elif action_type == "text":
            parts.append(
                "\nTo use a tool, write its name and arguments between 'Action:' and 'End Action', "
                "one tool at a time, e.g.\nAction: tool_name argument_1 End Action\n")
        else:
            parts.append(
                "\nTo use a tool, output one line of Python code that invokes it, between 'Action:' and "
                "'End Action'. Call one tool at a time, e.g.\nAction: tool_name(argument_1)\nEnd Action\n")
    else:
        parts.append(
            "You can write a block of Python code to solve the task; loops and variables are allowed. "
            "Print every value you want to see. Put the code between 'Action:' and 'End Action', e.g.\n"
            "Action:\nvar1 = func_name(argument_1)\nprint(var1)\nEnd Action\n")
    parts.append("\nNow, let's get started!\n\n")
    parts.append("You may first write your reasoning, then act, in this format:\n"
                 "Thought: your reasoning\nAction:\nyour code\nEnd Action\n")
    if requires_answer:
        parts.append(
            "\nIn each message output either 'Action:' or 'Answer:', never both. I will run your code and "
            "send back what it printed; then write more code or give the final answer as\n"
            "Answer: your answer\n")
        if answer_type == "number":
            parts.append("Please ONLY output the answer (e.g., a single number), without units or words.\n")
        parts.append("If I tell you that your answer is incorrect, revise your code and try again.\n")
    else:
        parts.append(
            "\nAfter each action you receive an observation of the environment. Then output (optionally a "
            "thought and) the next action using the tools. Continue until the goal is accomplished.\n")
    return "".join(parts)


def _append(messages: list[Message], text: str) -> None:
    messages[-1] = {"role": messages[-1]["role"], "content": messages[-1]["content"] + text}


def _goal_line(messages: list[Message], goal: str) -> None:
    # The original glued the goal line to the instruction when there was no state/example; keep a newline.
    if not messages[-1]["content"].endswith("\n"):
        _append(messages, "\n")
    _append(messages, GOAL_PREFIX + goal)


def initial_messages(goal: str, observation: str, tools: Sequence[Tool], requires_answer: bool,
                     answer_type: str | None, examples: Sequence[InContextExample] = (),
                     action_type: str = "python", style: str = "original") -> list[Message]:
    """The opening chat of a task (docs/original.md §2.1): instruction (in `style`), examples as real turns, state, goal.

    With `examples=()` this is also the training prompt (in-context examples removed).
    """
    messages: list[Message] = [{"role": "user", "content": instruction_text(
        tools, requires_answer, answer_type, action_type, style).strip()}]
    if examples:
        _append(messages, EXAMPLES_HEADER)
        for example in examples:
            _goal_line(messages, example.question)
            for assistant, user in example.turns:
                messages.append({"role": "assistant", "content": assistant})
                messages.append({"role": "user", "content": user})
            _append(messages, SEPARATOR)
    if observation:
        _append(messages, STATE_PREFIX + observation + "\n")
    _goal_line(messages, goal)
    return messages
