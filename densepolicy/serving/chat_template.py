"""What a model's own chat template (the one vLLM renders for a chat request) does to message contents.

Some chat templates change the text of a message before it reaches the model: Meta-Llama-3-Instruct's renders
``message['content'] | trim``, so an observation ``"42\\n"`` is served as ``42<|eot_id|>``. LLaMA-Factory's
templates insert contents as they are (``llama3``: ``{{content}}<|eot_id|>``), so a training record must hold
the contents as the server renders them, or the model is trained on prompts it is never sent.

    rules = content_rules(tokenizer)            # per role: does the template strip leading/trailing whitespace?
    served = served_messages(messages, rules)   # the messages as the served template renders their contents
    record = served_sharegpt(record, rules)     # the same for a ShareGPT record (system, turns, chosen, rejected)

The rules are found by rendering probe messages with the tokenizer's chat template (no model family is
hard-coded), and a rule is only used when it reproduces the template's rendering of the probe exactly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
_PROBE = "densepolicy-probe-7f3a"
_LEAD = "\n \t"
_TRAIL = " \t\n\n"
_SHAREGPT_ROLE = {"human": "user", "gpt": "assistant", "system": "system", "observation": "user"}


@dataclass(frozen=True)
class ContentRule:
    """What a chat template does to the whitespace around one role's message contents."""

    strip_leading: bool = False
    strip_trailing: bool = False

    def apply(self, content: str) -> str:
        """`content` as the template renders it (Jinja's `trim` is Python's `str.strip()`)."""
        if self.strip_leading and self.strip_trailing:
            return content.strip()
        if self.strip_leading:
            return content.lstrip()
        if self.strip_trailing:
            return content.rstrip()
        return content

    @property
    def changes_contents(self) -> bool:
        """True if the template strips any whitespace of this role's contents."""
        return self.strip_leading or self.strip_trailing

    def describe(self) -> str:
        """'strips leading and trailing whitespace' and the like."""
        sides = [name for name, on in (("leading", self.strip_leading), ("trailing", self.strip_trailing)) if on]
        return f"strips {' and '.join(sides)} whitespace" if sides else "keeps whitespace"


KEEP = ContentRule()


def _probe_chat(role: str, content: str) -> list[dict[str, str]]:
    """A minimal conversation in which `role` says `content` (a system message needs a user turn after it,
    an assistant message a user turn before it)."""
    if role == "system":
        return [{"role": "system", "content": content}, {"role": "user", "content": "hi"}]
    if role == "assistant":
        return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content},
                {"role": "user", "content": "ok"}]
    return [{"role": "user", "content": content}]


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 - a template may refuse a role (e.g. no system messages): keep contents
        return None
    return text if isinstance(text, str) else None


def content_rule(tokenizer: Any, role: str) -> ContentRule:
    """The `ContentRule` of `role` in the tokenizer's chat template, found by rendering a probe message with
    whitespace on both sides. `KEEP` when the template keeps the whitespace, refuses the role, or does
    something to it that no strip rule reproduces exactly."""
    content = _LEAD + _PROBE + _TRAIL
    padded = _render(tokenizer, _probe_chat(role, content))
    if padded is None or _PROBE not in padded:
        return KEEP
    for rule in (ContentRule(True, True), ContentRule(True, False), ContentRule(False, True)):
        if _render(tokenizer, _probe_chat(role, rule.apply(content))) == padded:  # the stripped text renders the same
            return rule
    return KEEP


def content_rules(tokenizer: Any) -> dict[str, ContentRule]:
    """`content_rule` of every chat role (system, user, assistant) of the tokenizer's chat template."""
    return {role: content_rule(tokenizer, role) for role in ROLES}


def describe_rules(rules: Mapping[str, ContentRule]) -> str:
    """One phrase: which roles' contents the template changes, e.g. 'strips leading and trailing whitespace
    of system, user and assistant contents'; '' when it changes none."""
    changing = [role for role in ROLES if rules.get(role, KEEP).changes_contents]
    if not changing:
        return ""
    by_rule: dict[str, list[str]] = {}
    for role in changing:
        by_rule.setdefault(rules[role].describe(), []).append(role)
    parts = []
    for text, roles in by_rule.items():
        names = roles[0] if len(roles) == 1 else ", ".join(roles[:-1]) + " and " + roles[-1]
        parts.append(f"{text} of {names} contents")
    return "; ".join(parts)


def default_system_prompt(tokenizer: Any) -> str | None:
    """The system prompt the chat template inserts when a conversation has none (SmolLM2: "You are a helpful AI
    assistant named SmolLM, trained by Hugging Face"), or None when it inserts none (Llama-3-Instruct)."""
    with_system = _render(tokenizer, [{"role": "system", "content": _PROBE + "-system"}, {"role": "user", "content": _PROBE}])
    without = _render(tokenizer, [{"role": "user", "content": _PROBE}])
    if with_system is None or without is None or _PROBE + "-system" not in with_system:
        return None
    prefix, _, suffix = with_system.partition(_PROBE + "-system")
    if without.startswith(prefix) and without.endswith(suffix) and len(without) >= len(prefix) + len(suffix):
        return without[len(prefix):len(without) - len(suffix)] or None
    return None


def served_messages(messages: Sequence[Mapping[str, str]], rules: Mapping[str, ContentRule]) -> list[dict[str, str]]:
    """Chat messages (role/content) with each content as the served chat template renders it."""
    return [{**message, "content": rules.get(message["role"], KEEP).apply(message["content"])}
            for message in messages]


def served_sharegpt(record: Mapping[str, Any], rules: Mapping[str, ContentRule]) -> dict[str, Any]:
    """A ShareGPT record (``system``, ``conversations`` of from/value turns, optional ``chosen`` / ``rejected``)
    with every content as the served chat template renders it; other keys are kept."""
    out = dict(record)
    if isinstance(record.get("system"), str):
        out["system"] = rules.get("system", KEEP).apply(record["system"])
    out["conversations"] = [served_turn(turn, rules) for turn in record["conversations"]]
    for side in ("chosen", "rejected"):
        if isinstance(record.get(side), Mapping):
            out[side] = served_turn(record[side], rules)
    return out


def served_turn(turn: Mapping[str, str], rules: Mapping[str, ContentRule]) -> dict[str, str]:
    """One ShareGPT turn (from/value) as the served chat template renders its content."""
    role = _SHAREGPT_ROLE.get(turn["from"], turn["from"])
    return {**turn, "value": rules.get(role, KEEP).apply(turn["value"])}


__all__ = [
    "KEEP",
    "ROLES",
    "ContentRule",
    "content_rule",
    "content_rules",
    "default_system_prompt",
    "describe_rules",
    "served_messages",
    "served_sharegpt",
    "served_turn",
]
