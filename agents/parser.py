"""Parse one assistant message into an action, an answer or an invalid generation (docs/original.md §2.3).

Rules, in order: both "Answer:" and "Action:" -> invalid; "Answer:" -> answer; "Action:" -> action
(cut at the first "End Action"); otherwise invalid. Extra actions/answers are ignored with a reminder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

INVALID_BOTH = ("Invalid generation. Your output should contain either 'Action:' or 'Answer:', "
                "but not both.")
INVALID_NONE = "Invalid generation. Your output should contain either 'Action:' or 'Answer:'."
REMINDER_ANSWERS = "You have output more than one answer. Only the first answer will be used."
REMINDER_ACTIONS = "You have output more than one action. Only the first action will be used."


@dataclass(frozen=True)
class ParsedGeneration:
    """`kind` is action/answer/invalid; `content` the code or answer; `feedback` the invalid message;
    `reminder` an extra note appended to the observation ("" if none)."""

    kind: Literal["action", "answer", "invalid"]
    content: str = ""
    feedback: str = ""
    reminder: str = ""


def parse_generation(text: str) -> ParsedGeneration:
    """Classify `text` following the original's rules (docs/original.md §2.3)."""
    has_answer, has_action = "Answer:" in text, "Action:" in text
    if has_answer and has_action:
        return ParsedGeneration("invalid", feedback=INVALID_BOTH)
    if has_answer:
        pieces = text.split("Answer:")
        reminder = REMINDER_ANSWERS if len(pieces) > 2 else ""
        return ParsedGeneration("answer", content=pieces[1].strip(), reminder=reminder)
    if has_action:
        pieces = text.split("Action:")
        reminder = REMINDER_ACTIONS if len(pieces) > 2 else ""
        code = pieces[1].lstrip().split("End Action")[0]
        return ParsedGeneration("action", content=code.rstrip(), reminder=reminder)
    return ParsedGeneration("invalid", feedback=INVALID_NONE)
