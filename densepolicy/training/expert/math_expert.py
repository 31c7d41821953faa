"""MATH expert: the reference solution's last arithmetic step as a one-line sympy program.

Where the solution contains `... $6+99\\cdot 4=\\boxed{402}$` (an equation whose right side is the
boxed answer), its left side is translated from a small LaTeX subset (numbers, + - \\cdot \\times /,
^, parentheses, \\frac, \\sqrt, \\pi) into Python and printed:

    Action:
    from sympy import *
    print(6 + 99*4)
    End Action
    Answer: 402

Problems without such a step are skipped (most of MATH). The translation is only parsed here (`ast`),
never evaluated: the program runs in the env's sandbox on replay, and the trajectory is kept only if
the printed value is accepted by the grader against the answer.
"""
from __future__ import annotations

import ast
import re
from typing import Any

from densepolicy.training.expert.replay import ExpertPlan
from envs.math_grading import math_equal

MATH_SEGMENT = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\[(.+?)\\\]", re.S)
ALLOWED_CALLS = {"Rational", "sqrt"}
ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
                 ast.Pow, ast.USub, ast.UAdd, ast.Call, ast.Name, ast.Load)
SIMPLE = [(r"\left", ""), (r"\right", ""), (r"\cdot", "*"), (r"\times", "*"), (r"\div", "/"), (r"\!", ""),
          (r"\,", ""), (r"\;", ""), (r"\dfrac", r"\frac"), (r"\tfrac", r"\frac"), ("[", "("), ("]", ")")]


class _Unsupported(ValueError):
    pass


def _group(text: str, i: int) -> tuple[str, int]:
    """The `{...}` group (or single character) starting at `text[i]`; returns (content, next index)."""
    if i >= len(text):
        raise _Unsupported("missing argument")
    if text[i] != "{":
        return text[i], i + 1
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j], j + 1
    raise _Unsupported("unbalanced braces")


def latex_to_python(latex: str) -> str:
    """Python source of a LaTeX arithmetic expression; raises `_Unsupported` outside the subset."""
    text = latex.strip()
    for old, new in SIMPLE:
        text = text.replace(old, new)
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if text.startswith(r"\frac", i):
            num, i = _group(text, i + 5)
            den, i = _group(text, i)
            a, b = latex_to_python(num), latex_to_python(den)
            out.append(f"Rational({a}, {b})" if a.isdigit() and b.isdigit() else f"({a})/({b})")
        elif text.startswith(r"\sqrt", i):
            arg, i = _group(text, i + 5)
            out.append(f"sqrt({latex_to_python(arg)})")
        elif text.startswith(r"\pi", i):
            out.append("pi")
            i += 3
        elif ch == "^":
            arg, i = _group(text, i + 1)
            out.append(f"**({latex_to_python(arg)})")
        elif ch in "{}":
            out.append("(" if ch == "{" else ")")
            i += 1
        elif ch.isdigit() or ch in "+-*/(). ":
            out.append(ch)
            i += 1
        else:
            raise _Unsupported(f"unsupported {text[i:i + 10]!r}")
    code = "".join(out)
    # implicit multiplication: 2(3), )(, 2sqrt(3), )2
    code = re.sub(r"(?<=[\d)])\s*(?=\(|sqrt|Rational|pi)", "*", code)
    code = re.sub(r"(?<=\))\s*(?=\d)", "*", code)
    return code


def _checked(code: str) -> str | None:
    """Normalised source if `code` is plain arithmetic with the allowed calls, else None."""
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if not isinstance(node, ALLOWED_NODES):
            return None
        if isinstance(node, ast.Name) and node.id not in ALLOWED_CALLS | {"pi"}:
            return None
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in ALLOWED_CALLS):
            return None
    if isinstance(tree.body, ast.Constant):
        return None  # restating the answer computes nothing
    return ast.unparse(tree)


def _unbox(text: str) -> str:
    match = re.search(r"\\boxed\{", text)
    if not match:
        return text.strip()
    inner, _ = _group(text, match.end() - 1)
    return inner.strip()


def final_step_program(solution: str, answer: str) -> str | None:
    """The program of the last `lhs = answer` step of `solution`, or None."""
    for match in reversed(list(MATH_SEGMENT.finditer(solution))):
        parts = next(g for g in match.groups() if g is not None).split("=")
        for k in range(len(parts) - 1, 0, -1):
            try:
                if not math_equal(_unbox(parts[k]).rstrip(".,"), answer):
                    continue
                code = _checked(latex_to_python(parts[k - 1]))
            except _Unsupported:
                continue
            if code is not None:
                needs_sympy = any(name in code for name in ("Rational", "sqrt", "pi"))
                return ("from sympy import *\n" if needs_sympy else "") + f"print({code})"
    return None


def expert_plan(row: dict[str, Any]) -> ExpertPlan | None:
    """One Action with the program, then the reference answer."""
    answer = str(row["answer"]).strip()
    program = final_step_program(row["solution"], answer)
    if program is None:
        return None
    return ExpertPlan((f"Action:\n{program}\nEnd Action", f"Answer: {answer}"), "final_step")
