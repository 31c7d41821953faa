"""GSM8K expert: the calculator annotations of a reference solution as one short Python program.

    "Natalia sold 48/2 = <<48/2=24>>24 clips in May. ... 48+24 = <<48+24=72>>72 clips ..."
    ->  Action:
        clips_may = 48 / 2
        clips_altogether = 48 + clips_may
        print(clips_altogether)
        End Action
        Answer: 72

Each annotation becomes one assignment; a number that equals an earlier annotation's result is
replaced by that result's variable (so the program shows how the steps depend on each other). The
expressions are only parsed here (`ast`), never evaluated: the program runs in the env's sandbox
when the trajectory is replayed, and the trajectory is kept only if that printed the gold answer.
"""
from __future__ import annotations

import ast
import keyword
import re
from typing import Any

from densepolicy.training.expert.replay import ExpertPlan, Replay
from envs.math_grading import math_equal

ANNOTATION = re.compile(r"<<([^<>]*)>>")
ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
                 ast.USub, ast.UAdd, ast.Name, ast.Load)
STOPWORDS = {"a", "an", "the", "of", "in", "on", "at", "for", "to", "and", "or", "is", "are", "was", "were", "be",
             "per", "by", "with", "that", "this", "it", "its", "he", "she", "they", "his", "her", "their", "so",
             "from", "more", "than", "each", "every", "as", "which", "who", "will", "has", "have", "had", "if",
             "then", "there", "left", "all", "total", "now", "does", "do", "did", "can", "after", "before"}
RESERVED = set(dir(__builtins__)) | {"print", "sum", "min", "max", "round", "int", "float", "math"}


def gold_answer(row: dict[str, Any]) -> str:
    """The number after `####`, commas removed (as `envs.math_env.GSM8KEnv`)."""
    return row["answer"].split("####")[-1].strip().replace(",", "")


def _number_text(text: str) -> str:
    """'05' -> '5', '1,000' -> '1000', '.5' -> '0.5' (Python rejects leading zeros)."""
    text = text.replace(",", "")
    if "." in text:
        whole, frac = text.split(".", 1)
        return f"{whole.lstrip('0') or '0'}.{frac}" if frac else whole.lstrip("0") or "0"
    return text.lstrip("0") or "0"


def _clean_expression(expr: str) -> str:
    expr = expr.replace("$", "").replace("x", "*").replace("X", "*").replace("÷", "/")
    return re.sub(r"\d[\d,]*\.?\d*|\.\d+", lambda m: _number_text(m.group(0)), expr)


def _name_after(text: str, taken: set[str], index: int) -> str:
    """A variable name from the words right after an annotation ('24 clips in May.' -> clips_may)."""
    words = re.split(r"[.,;:!?\n]|<<", text, maxsplit=1)[0].split()[1:8]
    picked = [w.lower() for w in (re.sub(r"[^A-Za-z]", "", w) for w in words)
              if w and w.lower() not in STOPWORDS][:2]
    name = "_".join(picked)
    if not name or not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED:
        name = f"step{index}"
    base, k = name, 2
    while name in taken:
        name, k = f"{base}{k}", k + 1
    return name


class _Substitute(ast.NodeTransformer):
    """Replace numbers equal to an earlier step's result by that step's variable (latest first)."""

    def __init__(self, results: dict[str, str]):
        self.results = results  # result text -> variable

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        text = _number_text(str(node.value)) if isinstance(node.value, (int, float)) else None
        if text is not None and text.endswith(".0"):
            text = text[:-2]
        if text in self.results:
            return ast.copy_location(ast.Name(self.results[text], ast.Load()), node)
        return node


def annotation_program(solution: str, gold: str) -> str | None:
    """The Python program of a reference solution's annotations, or None if it cannot be built
    (no annotation, one that is not plain arithmetic, or none whose result is the gold answer)."""
    lines: list[str] = []
    results: dict[str, str] = {}
    names: set[str] = set()
    answer_var, answer_line = None, 0
    for index, match in enumerate(ANNOTATION.finditer(solution), 1):
        expr, sep, result = match.group(1).rpartition("=")
        if not sep:
            return None
        try:
            tree = ast.parse(_clean_expression(expr).strip(), mode="eval")
        except SyntaxError:
            return None
        if not all(isinstance(n, ALLOWED_NODES) for n in ast.walk(tree)) or any(
                isinstance(n, ast.Name) for n in ast.walk(tree)):
            return None
        if isinstance(tree.body, ast.Constant):  # '<<24=24>>' restates a number: nothing to compute
            continue
        tree = _Substitute(results).visit(tree)
        name = _name_after(solution[match.end():], names, index)
        names.add(name)
        lines.append(f"{name} = {ast.unparse(tree)}")
        result_text = _number_text(_clean_expression(result).strip())
        results[result_text] = name
        if math_equal(result_text, gold):
            answer_var, answer_line = name, len(lines)
    if answer_var is None:
        return None
    return "\n".join(lines[:answer_line] + [f"print({answer_var})"])  # steps after the answer are not needed


def expert_plan(row: dict[str, Any]) -> ExpertPlan | None:
    """The expert's messages: one Action with the program, then the gold Answer."""
    gold = gold_answer(row)
    program = annotation_program(row["answer"], gold)
    if program is None:
        return None
    return ExpertPlan((f"Action:\n{program}\nEnd Action", f"Answer: {gold}"), "annotations")


def printed_gold(replay: Replay, gold: str) -> bool:
    """The sandbox printed a value that the grader accepts as the gold answer (the observation of the
    program's Action, i.e. the last user turn)."""
    observation = replay.messages[-2]["content"] if len(replay.messages) >= 2 else ""
    return replay.messages[-2]["role"] == "user" and math_equal(observation.strip(), gold)
