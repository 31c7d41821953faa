"""Math answer checking: `math_equal(pred, ref) -> bool`, lenient like the original, without eval.

The original (Eurus/ToRA `math_equal`, docs/original.md §4.1) accepts, and so does this function:
  * `$`, `\\$`, `%`, `\\%`, `^\\circ`, `\\text{...}` units, `\\left`/`\\right`, spacing commands;
  * thousands separators (`1,234`, `1{,}234`) and base subscripts (`101_2` -> `101`);
  * numbers equal up to rel. 1e-4, also after x100 or /100 (percentages) when both are plain numbers;
  * numeric expressions equal up to rel. 1e-4 (`\\frac{\\sqrt3}{2}` vs `0.86603`), with `\\pi`
    also read as 3.14;
  * tuples, intervals, lists and matrices element by element; `x = 3` vs `3`;
  * symbolic equality (`x^2+2x` vs `x(x+2)`, sets in any order) through math-verify/sympy.
Not its bugs: brackets must agree, so `(1,2)` is not `(1,2]` and `[1,2]` is not `(1,2)`
(see docs/deviations.md); nothing is `eval`ed.

Cheap cases are decided in-process by a small recursive-descent evaluator (floats only, bounded
input). Symbolic cases go to a pool of up to min(4, CPUs) long-lived grading processes (spawned from
the sandbox zygote and confined like a sandbox) with a wall-clock limit: a grader that does not answer
within `timeout` seconds is killed and the answer counts as not equal. Works from any thread (no
SIGALRM); a cold start (first symbolic check of a worker) adds about a second.
"""
from __future__ import annotations

import math
import os
import re
import threading
from typing import Any

MAX_INPUT_CHARS = 2000
DEFAULT_TIMEOUT = 3.0
REL_TOL = 1e-4

# ----------------------------------------------------------------------------- normalisation
_REMOVE = [r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", r"\displaystyle", r"\limits",
           "^{\\circ}", "^\\circ", "\\circ", "°", "\\%", "%", "\\$", "$", "~"]
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_TRAILING_UNIT = re.compile(r"^(.*?[0-9}a-zA-Z)\]])\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}\s*$")
_BASE_SUBSCRIPT = re.compile(r"^([0-9A-Fa-f]+)_\{?[0-9]+\}?$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (brace-matched), or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        rest = text[start + len("\\boxed"):].strip()
        return rest.split("$")[0].strip() or None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def normalize(text: str) -> str:
    """Strip presentation-only LaTeX so that equal answers tend to become equal strings."""
    s = str(text).strip()
    boxed = last_boxed(s) if "\\boxed" in s or "\\fbox" in s else None
    if boxed is not None:
        s = boxed
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)          # \frac12 -> \frac{1}{2}
    s = re.sub(r"\\frac(\{[^{}]*\})(\d)", r"\\frac\1{\2}", s)   # \frac{1}2
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)                    # \sqrt3 -> \sqrt{3}
    match = _TRAILING_UNIT.match(s)
    if match:
        s = match.group(1)
    for token in _REMOVE:
        s = s.replace(token, "")
    for _ in range(3):
        s = _TEXT_CMD.sub(r"\1", s)
    s = s.strip().rstrip(".").strip()
    if s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2].strip()
    match = _BASE_SUBSCRIPT.match(s)
    if match:
        s = match.group(1)
    return s


def _key(s: str) -> str:
    return re.sub(r"\s+", "", s).lower()


def plain_number(s: str) -> float | None:
    """`s` as a float if it is a plain number (thousands separators allowed), else None."""
    s = s.strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if not _NUMBER.match(s):
        return None
    try:
        value = float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)


# ----------------------------------------------------------------------------- safe evaluator
class _Unsupported(Exception):
    pass


_TOKEN = re.compile(r"\s*(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+|\\frac|\\sqrt|\\pi|\\cdot|\\times|\\div|pi|π|"
                    r"sqrt|[-+*/^(){}\[\]])")


class _Evaluator:
    """Recursive-descent arithmetic over floats: + - * / ^, parentheses, \\frac, \\sqrt, \\pi,
    implicit multiplication. Anything else (variables, functions, i) raises _Unsupported."""

    def __init__(self, text: str, pi: float):
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.pi = pi

    @staticmethod
    def _tokenize(text: str) -> list[str]:
        tokens, pos = [], 0
        text = text.strip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match:
                raise _Unsupported(text[pos:])
            tokens.append(match.group(1))
            pos = match.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        return tokens

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        tok = self._peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Unsupported(f"expected {expected}")
        self.pos += 1
        return tok

    def parse(self) -> float:
        value = self._sum()
        if self._peek() is not None:
            raise _Unsupported("trailing tokens")
        return value

    def _sum(self) -> float:
        value = self._product()
        while self._peek() in ("+", "-"):
            op = self._take()
            rhs = self._product()
            value = value + rhs if op == "+" else value - rhs
        return value

    def _product(self) -> float:
        value = self._unary()
        while True:
            tok = self._peek()
            if tok in ("*", "/", "\\cdot", "\\times", "\\div"):
                self._take()
                rhs = self._unary()
                if tok in ("/", "\\div"):
                    if rhs == 0:
                        raise _Unsupported("division by zero")
                    value /= rhs
                else:
                    value *= rhs
            elif tok is not None and tok not in ("+", "-", ")", "}", "]", "^"):
                value *= self._power()  # implicit multiplication: 2\pi, 3\sqrt{2}, 2(3)
            else:
                return value

    def _unary(self) -> float:
        if self._peek() in ("+", "-"):
            sign = -1.0 if self._take() == "-" else 1.0
            return sign * self._unary()
        return self._power()

    def _power(self) -> float:
        base = self._atom()
        if self._peek() == "^":
            self._take()
            exponent = self._unary() if self._peek() in ("+", "-") else self._power()
            if abs(exponent) > 1000 or (base == 0 and exponent < 0):
                raise _Unsupported("exponent")
            try:
                value = math.pow(base, exponent)
            except (OverflowError, ValueError):
                raise _Unsupported("power") from None
            if isinstance(value, complex) or not math.isfinite(value):
                raise _Unsupported("power")
            return value
        return base

    def _group(self, open_tok: str, close_tok: str) -> float:
        self._take(open_tok)
        value = self._sum()
        self._take(close_tok)
        return value

    def _atom(self) -> float:
        tok = self._peek()
        if tok is None:
            raise _Unsupported("unexpected end")
        if tok == "(":
            return self._group("(", ")")
        if tok == "{":
            return self._group("{", "}")
        if tok == "\\frac":
            self._take()
            num = self._braced_or_digit()
            den = self._braced_or_digit()
            if den == 0:
                raise _Unsupported("division by zero")
            return num / den
        if tok in ("\\sqrt", "sqrt"):
            self._take()
            root = 2.0
            if self._peek() == "[":
                root = self._group("[", "]")
            arg = self._braced_or_digit() if self._peek() != "(" else self._group("(", ")")
            if arg < 0 or root == 0:
                raise _Unsupported("sqrt")
            return arg ** (1.0 / root)
        if tok in ("\\pi", "pi", "π"):
            self._take()
            return self.pi
        if tok[0].isdigit() or tok[0] == ".":
            self._take()
            return float(tok)
        raise _Unsupported(tok)

    def _braced_or_digit(self) -> float:
        if self._peek() == "{":
            return self._group("{", "}")
        tok = self._take()  # \frac12 : single digits
        if not tok[0].isdigit():
            raise _Unsupported(tok)
        return float(tok[0]) if len(tok) > 1 and "." not in tok else float(tok)


def numeric_value(s: str, pi: float = math.pi) -> float | None:
    """The value of a closed-form numeric expression, or None (never evaluates Python)."""
    if len(s) > 300 or not s.strip():
        return None
    try:
        value = _Evaluator(s, pi).parse()
    except (_Unsupported, RecursionError, ZeroDivisionError, OverflowError, ValueError):
        return None
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- structure
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _split_top(s: str, sep: str) -> list[str]:
    parts, depth, current = [], 0, []
    i = 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0 and s.startswith(sep, i):
            parts.append("".join(current).strip())
            current = []
            i += len(sep)
            continue
        current.append(c)
        i += 1
    parts.append("".join(current).strip())
    return parts


def _brackets(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) if `s` is wrapped in one bracket pair, e.g. `(1,2]`, `\\{1,2\\}`."""
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
        return ("{", inner, "}") if _balanced(inner) else None
    if len(s) >= 2 and s[0] in "([{" and s[-1] in ")]}":
        inner = s[1:-1]
        if _balanced(inner):
            return s[0], inner, s[-1]
    return None


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _matrix(s: str) -> list[list[str]] | None:
    match = re.fullmatch(r"\\begin\{([pbvB]?matrix)\}(.*)\\end\{\1\}", s.strip(), re.DOTALL)
    if not match:
        return None
    rows = [r for r in (row.strip() for row in match.group(2).split("\\\\")) if r]
    return [[c.strip() for c in row.split("&")] for row in rows]


# ----------------------------------------------------------------------------- comparison
def math_equal(pred: Any, ref: Any, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Is the answer `pred` equal to the reference `ref`? Lenient like the original grader
    (module docstring) but without eval; returns within about `timeout` seconds."""
    if pred is None or ref is None:
        return False
    pred, ref = str(pred), str(ref)
    if _key(pred) == _key(ref):
        return True
    for boxed in (last_boxed(pred),):  # a whole solution: only its boxed answer counts
        if boxed is not None:
            pred = boxed
    if len(pred) > MAX_INPUT_CHARS or len(ref) > MAX_INPUT_CHARS:
        return False
    p, r = normalize(pred), normalize(ref)
    if not p:
        return False
    verdict = _compare(p, r, depth=0)
    if verdict is not None:
        return verdict
    return _symbolic_equal(p, r, timeout)


def _compare(p: str, r: str, depth: int) -> bool | None:
    """True/False when decided cheaply, None when only a symbolic check can tell."""
    if _key(p) == _key(r):
        return True
    pn, rn = plain_number(p), plain_number(r)
    if pn is not None and rn is not None:  # the original's percentage leniency: x1, /100, x100
        return any(_close(pn, rn * k) for k in (1.0, 0.01, 100.0))
    if depth > 4:
        return None
    # matrices
    pm, rm = _matrix(p), _matrix(r)
    if (pm is None) != (rm is None):  # a vector written as a tuple/list: the original accepted it
        matrix, other = (pm, r) if pm is not None else (rm, p)
        other_b = _brackets(other)
        cells = [c for row in matrix for c in row]
        if other_b is None or (len(matrix) > 1 and any(len(row) > 1 for row in matrix)):
            return False
        parts = _split_top(other_b[1], ",")
        if len(parts) != len(cells):
            return False
        results = [_compare(a, b, depth + 1) for a, b in zip(cells, parts)]
        return True if all(x is True for x in results) else (False if any(x is False for x in results) else None)
    if pm is not None and rm is not None:
        if [len(row) for row in pm] != [len(row) for row in rm]:
            return False
        results = [_compare(a, b, depth + 1) for ra, rb_ in zip(pm, rm) for a, b in zip(ra, rb_)]
        if all(x is True for x in results):
            return True
        return False if any(x is False for x in results) else None
    # structures: tuples, intervals, lists, sets
    pb, rb = _brackets(p), _brackets(r)
    p_parts = _split_top(pb[1] if pb else p, ",")
    r_parts = _split_top(rb[1] if rb else r, ",")
    if pb and len(p_parts) == 1 and not rb:        # "(E)" vs "E", "{5}" vs "5"
        return _compare(p_parts[0], r, depth + 1)
    if rb and len(r_parts) == 1 and not pb:
        return _compare(p, r_parts[0], depth + 1)
    if len(p_parts) > 1 or len(r_parts) > 1:
        if len(p_parts) != len(r_parts):
            return None if _has_letters(p + r) else False
        if pb and rb and (pb[0], pb[2]) != (rb[0], rb[2]):
            return False  # (1,2) vs (1,2]: different intervals; [1,2] vs (1,2): list vs tuple
        bare_vs_paren = (pb is None) != (rb is None) and (pb or rb)[0] == "("  # "1,2" vs "(1,2)"
        if (pb is None) != (rb is None) and not bare_vs_paren:
            return None
        results = [_compare(a, b, depth + 1) for a, b in zip(p_parts, r_parts)]
        if all(x is True for x in results):
            return True
        is_set = (pb and pb[0] == "{") or (pb is None and rb is None)
        if any(x is False for x in results) and not is_set and not _has_letters(p + r):
            return False
        return None
    # equations: "x = 3" vs "3"
    if p.count("=") == 1 and "=" not in r:
        lhs, rhs = p.split("=")
        if len(lhs.strip()) <= 2:
            return _compare(rhs.strip(), r, depth + 1)
    if r.count("=") == 1 and "=" not in p:
        lhs, rhs = r.split("=")
        if len(lhs.strip()) <= 2:
            return _compare(p, rhs.strip(), depth + 1)
    # closed-form numbers: \frac{\sqrt3}{2} vs 0.866; \pi also as 3.14 (original leniency)
    pv, rv = numeric_value(p), numeric_value(r)
    if pv is not None and rv is not None:
        if _close(pv, rv):
            return True
        if "pi" in p + r or "π" in p + r:
            pv2, rv2 = numeric_value(p, 3.14), numeric_value(r, 3.14)
            return any(a is not None and b is not None and _close(a, b)
                       for a, b in ((pv2, rv), (pv, rv2), (pv2, rv2)))
        return False
    return None


def _has_letters(s: str) -> bool:
    return bool(re.search(r"[a-zA-Z]", s.replace("\\frac", "").replace("\\sqrt", "").replace("\\pi", "")))


# ----------------------------------------------------------------------------- symbolic (confined process)
class _GraderPool:
    """Up to `size` grading processes shared by all threads; a timed-out one is killed and replaced."""

    def __init__(self, size: int):
        self.size = size
        self.idle: list[Any] = []
        self.total = 0
        self.cond = threading.Condition()

    def acquire(self) -> Any:
        with self.cond:
            while not self.idle and self.total >= self.size:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            self.total += 1
        try:
            return _spawn_grader()
        except BaseException:
            self.release(None)
            raise

    def release(self, grader: Any) -> None:
        """Give a grader back (None: it died or was killed)."""
        with self.cond:
            if grader is not None and grader.alive:
                self.idle.append(grader)
            else:
                self.total -= 1
            self.cond.notify()


_POOL = _GraderPool(max(1, min(4, os.cpu_count() or 1)))


def _forget_graders_in_child() -> None:
    global _POOL
    _POOL = _GraderPool(_POOL.size)


os.register_at_fork(after_in_child=_forget_graders_in_child)


def _symbolic_equal(p: str, r: str, timeout: float) -> bool:
    from envs.forkable import CallTimeout, RemoteDied, RemoteError
    pool = _POOL
    for _attempt in range(2):
        grader = pool.acquire()
        try:
            result = bool(grader.call("equal", p, r, timeout=timeout))
        except CallTimeout:  # the grader was killed: the answer counts as not equal
            pool.release(None)
            return False
        except RemoteError:
            pool.release(grader)
            return False
        except RemoteDied:  # crashed (e.g. memory): retry once on a fresh grader
            pool.release(None)
            continue
        pool.release(grader)
        return result
    return False


def _spawn_grader() -> Any:
    from dataclasses import asdict

    from envs.sandbox import SandboxLimits, new_lineage_uid, shared_fork_server
    limits = asdict(SandboxLimits(cpu_seconds=3600, processes=16))
    return shared_fork_server().spawn("envs.math_grading:_Grader", limits, new_lineage_uid(), timeout=120)


class _Grader:
    """Runs in the confined grading process: math-verify with its own timeouts disabled (the
    caller enforces a wall-clock limit by killing this process)."""

    def __init__(self, limits: dict[str, int], uid: int | None):
        from envs.sandbox import confine_process
        confine_process(limits, uid)
        import logging

        import math_verify  # noqa: F401 - preloaded by the zygote
        logging.getLogger("math_verify").setLevel(logging.ERROR)

    def equal(self, pred: str, ref: str) -> bool:
        from math_verify import parse, verify
        gold = parse(f"${ref}$", parsing_timeout=None) or parse(ref, parsing_timeout=None)
        answer = parse(f"${pred}$", parsing_timeout=None) or parse(pred, parsing_timeout=None)
        if not gold or not answer:
            return False
        return bool(verify(gold, answer, timeout_seconds=None))
