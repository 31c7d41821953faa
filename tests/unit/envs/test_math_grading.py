"""envs.math_grading.math_equal: the original's leniency without its bugs, on the real data."""
import json
import threading
import time

import pytest

from densepolicy.paths import data_dir
from envs.math_grading import last_boxed, math_equal

DATA = data_dir()


def _gsm8k_golds(split):
    with open(DATA / "gsm8k" / f"{split}.jsonl") as f:
        return [json.loads(line)["answer"].split("####")[-1].strip().replace(",", "") for line in f]


@pytest.mark.parametrize("split", ["test", "train"])
def test_every_gsm8k_gold_and_its_formatted_variants(split):
    misses = []
    for gold in _gsm8k_golds(split):
        n = int(gold)
        variants = [gold, f"{n:,}", f"${n}", f"\\${n:,}", f"{n}.0", f"{n}.00", f"{n}%", f"\\boxed{{{n}}}",
                    f"{n:,}".replace(",", "{,}"), f" {n} "]
        misses += [(v, gold) for v in variants if not math_equal(v, gold)]
    assert misses == []


def test_math_golds_match_their_solutions_boxed_answer():
    with open(DATA / "math" / "math_test5000.jsonl") as f:
        rows = [json.loads(line) for line in f]
    ok = sum(math_equal(last_boxed(r["solution"]), r["answer"]) for r in rows)
    whole = sum(math_equal(r["solution"], r["answer"]) for r in rows)  # whole solution text as the answer
    assert ok >= 0.995 * len(rows)
    assert whole >= 0.995 * len(rows)


def test_rejects_all_negative_pairs():
    with open(DATA / "checks" / "grader_negatives.json") as f:
        pairs = json.load(f)
    assert len(pairs) == 2000
    accepted = [p for p in pairs if math_equal(p["pred"], p["ref"])]
    assert accepted == []


@pytest.mark.parametrize("pred,ref", [
    ("\\frac{1}{2}", "0.5"), ("0.5", "\\dfrac12"), ("3/4", "\\frac34"),
    ("50", "0.5"), ("0.5", "50"), ("12\\%", "12"), ("12%", "0.12"),            # percentage leniency
    ("$1,234", "1234"), ("1{,}234", "1234"), ("\\$18.00", "18"),
    ("101_2", "101"), ("1011_{2}", "1011"),                                      # base subscripts
    ("x^2+2x", "x(x+2)"), ("\\{1,2\\}", "\\{2,1\\}"),                            # symbolic
    ("x=3", "3"), ("3", "y = 3"),
    ("6.28", "2\\pi"), ("6.2832", "2\\pi"), ("0.866", "\\frac{\\sqrt{3}}{2}"), ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"), ("[1,2)", "[1, 2)"), ("1, 2", "(1,2)"),
    ("5", "5\\text{ inches}"), ("E", "(\\text{E})"), ("\\text{Sunday}", "Sunday"), ("90^\\circ", "90"),
    ("\\begin{pmatrix}1\\\\3\\end{pmatrix}", "(1,3)"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}".replace("bmatrix", "pmatrix")),
    ("\\boxed{18}", "18"), ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5"), ("-\\frac{3}{2}", "-1.5"),
])
def test_lenient_equalities(pred, ref):
    assert math_equal(pred, ref)


@pytest.mark.parametrize("pred,ref", [
    ("(1,2)", "(1,2]"), ("[1,2]", "(1,2)"), ("(1,2)", "[1,2]"), ("(1,2)", "(2,1)"), ("[-1,3)", "[-1,3]"),
    ("1", "2"), ("0.5", "0.51"), ("17", "1700000"), ("x^2", "x^3"), ("2\\pi", "7"),
    ("\\begin{pmatrix}1\\\\3\\end{pmatrix}", "1"), ("", "0"), ("1,2,3", "(1,2)"),
    ("__import__('os').system('touch /tmp/pwned')", "0"),
])
def test_inequalities(pred, ref):
    assert not math_equal(pred, ref)


def test_time_limit_on_pathological_input():
    for pred, ref in [("9^{9^{9^{9^{9}}}}", "1"), ("(x+1)^{100000000} - 1", "x^{100000000}"),
                      ("\\frac{" * 400 + "1" + "}{2}" * 400, "1"), ("1" * 5000, "1")]:
        t0 = time.monotonic()
        assert not math_equal(pred, ref, timeout=1.0)
        assert time.monotonic() - t0 < 5
    assert math_equal("x^2+2x", "x(x+2)")  # the grader recovers after a kill


def test_works_from_threads():
    results = []
    threads = [threading.Thread(target=lambda: results.append(math_equal("x^2+2x", "x(x+2)"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [True] * 4
