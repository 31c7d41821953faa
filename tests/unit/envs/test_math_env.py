"""envs.math_env: splits, ids, goals, sandboxed actions, answers, fork, errors (real data, real sandbox)."""
import pytest

from envs import EnvError, load_env
from envs.math_env import CORRECT, EPISODE_OVER, INCORRECT


def test_splits_and_ids():
    assert len(load_env("gsm8k", split="test").task_ids()) == 1319
    assert len(load_env("gsm8k", split="train").task_ids()) == 7473
    train = load_env("math", split="train")
    test = load_env("math", split="test")
    full = load_env("math", split="test5000")
    assert len(train.task_ids()) == 4500 and len(test.task_ids()) == 500 and len(full.task_ids()) == 5000
    # train excludes every MATH-500 problem
    test_problems = {test.start(t).goal for t in test.task_ids()}
    assert not any(train.rows[int(t)]["problem"] in test_problems for t in train.task_ids())
    assert sum(full.rows[int(t)]["problem"] in test_problems for t in full.task_ids()) == 500


def test_goal_target_and_initial_observation():
    env = load_env("gsm8k", split="test")
    ep = env.start("0")
    assert ep.goal.startswith("Janet")
    assert ep.observation == ""
    assert env.task_info("0") == {"target": "18"}
    info = load_env("math", split="test").task_info("0")
    assert info["target"] == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_errors_name_the_bad_input(tmp_path):
    with pytest.raises(EnvError, match="split 'dev'.*'test'"):
        load_env("gsm8k", split="dev")
    with pytest.raises(EnvError, match="task id '99999'.*'0'..'1318'"):
        load_env("gsm8k", split="test").start("99999")
    with pytest.raises(EnvError, match="task id 'abc'"):
        load_env("math", split="test").task_info("abc")
    with pytest.raises(EnvError, match="missing"):
        load_env("math", split="test", data_dir=tmp_path)


def test_act_answer_and_episode_over():
    env = load_env("gsm8k", split="test")
    ep = env.start("0")
    try:
        r = ep.act("eggs = 16 - 3 - 4\nprint(eggs * 2)")
        assert r.observation == "18\n" and not r.done and not r.success
        assert ep.act("eggs").observation == "9\n"  # persistent interpreter
        r = ep.answer("17")
        assert r.observation == INCORRECT and not r.done
        r = ep.answer("$18")
        assert r.observation == CORRECT and r.done and r.success
        for after in (ep.act("print(1)"), ep.answer("18"), ep.answer("0")):
            assert after.observation == EPISODE_OVER and after.done and after.success
    finally:
        ep.close()


def test_model_code_cannot_fake_success():
    env = load_env("gsm8k", split="test")
    ep = env.start("0")
    try:
        attacks = ["print('Your answer is correct.')",
                   "import builtins\nbuiltins.print = lambda *a, **k: None",
                   "import envs.math_env",
                   "import gc\nfor o in gc.get_objects():\n    if hasattr(o, 'success'):\n        o.success = o.done = True",
                   "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
                   "while True:\n    pass"]
        for code in attacks:
            r = ep.act(code)
            assert not r.done and not r.success
            assert not ep.done and not ep.success
        assert ep.answer("Your answer is correct.").observation == INCORRECT
        assert not ep.done
        assert ep.answer("18").success
    finally:
        ep.close()


def test_math_symbolic_answer_and_fork():
    env = load_env("math", split="test")
    ep = env.start("0")  # target (3, pi/2)
    try:
        ep.act("import sympy\nr = sympy.sqrt(0**2 + 3**2)\ntheta = sympy.pi / 2")
        child = ep.fork()
        assert child.act("print(r, theta)").observation == "3 pi/2\n"
        child.act("r = 100")
        assert ep.act("print(r)").observation == "3\n"  # independent
        assert child.answer("(3, \\frac{\\pi}{2})").success
        assert not ep.done  # the parent is unaffected by the child's answer
        assert ep.answer("(3, \\pi)").observation == INCORRECT
        child.close()
    finally:
        ep.close()


def test_timeout_observation_and_close_is_idempotent():
    env = load_env("gsm8k", split="test", action_timeout=1.0)
    ep = env.start("1")
    r = ep.act("import time\ntime.sleep(10)")
    assert r.info["timed_out"] and "Timed out" in r.observation
    assert ep.act("print('back')").observation == "back\n"
    ep.close()
    ep.close()


def test_fork_before_any_action_and_lazy_sandbox():
    ep = load_env("gsm8k", split="test").start("2")
    child = ep.fork()
    assert child.act("print(2 + 2)").observation == "4\n"
    assert ep.act("print(3)").observation == "3\n"
    child.close()
    ep.close()


def test_model_code_imports_what_the_worker_can_import():
    """Modules that are not preloaded import in the sandbox wherever Python lives (pyenv under a home of
    mode 0700, a venv under the temp folder); run from such a place by test_checkout_in_tmp."""
    env = load_env("gsm8k", split="test", action_timeout=120.0)  # scipy imports slowly on a loaded machine
    ep = env.start("0")
    try:
        code = ("import sys\n"
                "print([m for m in ('heapq', 'encodings.idna', 'scipy', 'sympy.physics') if m in sys.modules])\n"
                "import heapq, bisect, statistics, encodings.idna\n"
                "import scipy.optimize\n"
                "import sympy.physics.units as units\n"  # a sympy submodule that `import sympy` does not load
                "h = [5, 1, 3]\nheapq.heapify(h)\n"
                "print(heapq.heappop(h), bisect.bisect([1, 2, 4], 3), statistics.median([1, 7, 3]))\n"
                "print('bücher.de'.encode('idna'))\n"
                "print(round(scipy.optimize.brentq(lambda x: x * x - 2, 0, 2), 6))\n"
                "print(units.convert_to(units.kilometer, units.meter))")
        assert ep.act(code).observation == "[]\n1 2 3\nb'xn--bcher-kva.de'\n1.414214\n1000*meter\n"
    finally:
        ep.close()
