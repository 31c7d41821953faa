"""`preset=paper`: one switch for the original's behaviour in the sampler and the post-processing,
checked on a small tree whose statistics and pairs were worked out by hand (see the docstrings)."""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from agents.codeact_agent_tree import tree_rules
from agents.tree import TreeSearch
from densepolicy.config import ConfigError
from densepolicy.postprocess.cli import load_postprocess_config
from densepolicy.presets import PRESETS
from densepolicy.sampling.config import resolve_sampler_config, sampler_settings
from densepolicy.testing.synthetic_trees import tree_from_spec, write_jsonl
from tests.harness.worker_runs import SCRIPTED_ENV_ARGS

ROOT = Path(__file__).resolve().parents[3]
SMALL = ["base=2", "max_steps=3", "window_size=8", "max_sample_number=100"]
PAPER_SAMPLER = {"visit_counting": "faithful", "select_leaves": True, "dedup": "faithful",
                 "update_rows": "faithful", "overflow_counts_as_failure": True, "prompt_style": "original",
                 "stop_if_uniform_after": 0, "arithmetic": "faithful", "incontext_draw": "first_step"}

# The hand-checked tree (base 2, depth 3). S = success, F = fail, X = cut by the context limit.
#   0 ─┬─ 0-0 ─┬─ 0-0-0 F          1 ─┬─ 1-0 ─┬─ 1-0-0 F
#      │       └─ 0-0-1 S             │       └─ 1-0-1 F
#      └─ 0-1 S (answer at depth 2)   └─ 1-1 ─┬─ 1-1-0 F
#                                             └─ 1-1-1 X
SPEC = {"0": {"0": {"0": "F", "1": "S"}, "1": "S"}, "1": {"0": {"0": "F", "1": "F"}, "1": {"0": "F", "1": "X"}}}
RUNS = [((0, 0, 0), "fail"), ((0, 0, 1), "success"), ((0, 1), "success"), ((1, 0, 0), "fail"),
        ((1, 0, 1), "fail"), ((1, 1, 0), "fail"), ((1, 1, 1), "context_overflow")]


def _sampler(*overrides):
    return resolve_sampler_config("codeact_agent_tree", "math", [*SMALL, *overrides])


def _search(cfg):
    """The 7 runs recorded at once (they stand for the leaves of earlier windows; values and counts do
    not depend on the order of the updates), the statistics updated, one node selected."""
    search = TreeSearch(tree_rules(cfg), seed=0)
    search.first_queue()
    for run, status in RUNS:
        full = run + (0,) * (3 - len(run))
        search.record(full, run, 1.0 if status == "success" else 0.0, status)
    queue = search.next_queue()
    return search, queue


def test_preset_selects_every_original_behaviour_and_explicit_keys_win():
    default, paper = sampler_settings(_sampler()), sampler_settings(_sampler("preset=paper"))
    assert {k: default[k] for k in PAPER_SAMPLER} == {
        "visit_counting": "fixed", "select_leaves": False, "dedup": "fixed",
        "update_rows": "fixed", "overflow_counts_as_failure": False, "prompt_style": "compact",
        "stop_if_uniform_after": 0, "arithmetic": "fixed", "incontext_draw": "task"}
    assert {k: paper[k] for k in PAPER_SAMPLER} == PAPER_SAMPLER == PRESETS["sampler"]["paper"]
    # an explicit key given together with the preset wins (the others keep the preset's value)
    mixed = _sampler("preset=paper", "update_rows=fixed")
    assert _sampler("stop_if_uniform_after=8", "preset=paper").tree.stop_if_uniform_after == 8  # explicit wins
    assert mixed.tree.update_rows == "fixed" and mixed.tree.visit_counting == "faithful" and mixed.preset == "paper"
    assert _sampler("update_rows=fixed", "preset=paper").tree.update_rows == "fixed"   # order does not matter
    assert _sampler("preset=paper", "tree.update_rows=fixed").tree.update_rows == "fixed"  # the nested key too
    with pytest.raises(ConfigError, match="preset"):
        _sampler("preset=original")

    def post(*overrides):
        return load_postprocess_config(argparse.Namespace(config="configs/postprocess.yaml", overrides=list(overrides)))
    assert (post().pairs.visit_counting, post().pairs.arithmetic) == ("fixed", "fixed")
    assert (post("preset=paper").pairs.visit_counting, post("preset=paper").pairs.arithmetic) == ("faithful", "faithful")
    assert post("preset=paper", "pairs.visit_counting=fixed").pairs.visit_counting == "fixed"
    # one switch vocabulary: the post-processing's old names are refused, naming the key
    for old in ("runs", "original"):
        with pytest.raises(ConfigError, match=r"pairs\.visit_counting.*fixed.*faithful"):
            post(f"pairs.visit_counting={old}")
    with pytest.raises(ConfigError, match="preset"):
        post("preset=paper2")


def test_sampler_statistics_on_the_hand_checked_tree():
    """Sampler value tree after the 7 runs (k = runs through a node; rem = avg remaining depth).

    Values (leaf 0/1, inner = mean of its children): 0-0 = 0.5, 0-1 = 1, 0 = mean(0.5, 1) = 0.75; every
    node under 1 has value 0. Visit threshold min(floor(2**rem), 8).

    default (visits = k; the overflow run 1-1-1 is not in the value tree):
      1-1: k=1; 1: k=3, rem 2 -> needs 4 -> untrusted. 0: k=3, rem (2+2+1)/3 = 5/3 -> needs 3 -> trusted.
      Qualifying pairs: (0-0-0, 0-0-1) gap 1, (0-0, 0-1) gap 0.5 (0-0: k=2 >= floor(2**1) = 2) -> 2.
      Selection only among expandable nodes (not leaves, not runs): 0-0, 0, 1-0, 1-1, 1. Priority
      0.8*gap**0.25 + 0.2*rem/3 + 2*sqrt(1+v)/(2+v) with v = runs + selections:
      0-0 = 0.8*0.5**0.25 + 0.2/3 + 2*sqrt(3)/4 = 1.605; 0 = 0.8*0.75**0.25 + 0.2*(5/3)/3 + 0.8 = 1.656;
      1 = 0.744 + 0.133 + 0.8 = 1.678 (max); 1-0 = 0 + 0.067 + 0.866 = 0.933; 1-1 = 0.067 + 0.943 = 1.010.
      -> node 1 is chosen; all 4 of its extensions already ran (fixed de-dup also blocks the overflow
      run 1-1-1), so the queue is empty.
    paper (visits 2k-1, +1 per selection; the overflow run is a failed leaf):
      1-1: k=2 -> 3 visits; 1: k=4 -> 7 visits >= 4 -> trusted; 0: 5 visits >= 3; 0-0: 3 >= 2.
      Qualifying pairs: the two above + (0, 1) with gap 0.75 -> 3.
      Selection over every node: leaves 0-0-0 and 0-0-1 have gap 1, rem 0, 1 visit:
      0.8 + 0 + 2*sqrt(2)/3 = 1.743, above 0-1 (0.8*0.5**0.25 + 0.943 = 1.616), 0-0 (0.673 + 0.067 +
      2*2/5 = 1.539), 0 (0.744 + 0.111 + 2*sqrt(6)/7 = 1.555) and 1 (0.744 + 0.133 + 2*sqrt(8)/9 = 1.506).
      -> a full-depth leaf is chosen (visits 1 -> 2): it has no extension, the queue is empty.
    """
    search, queue = _search(_sampler())
    stats = search.tree.stats
    assert {n: stats[n].visits for n in [(0,), (0, 0), (1,), (1, 1)]} == {(0,): 3, (0, 0): 2, (1,): 3, (1, 1): 1}
    assert (stats[(0,)].value, stats[(0,)].avg_remaining) == (0.75, pytest.approx(5 / 3))
    assert sorted(search.tree.qualifying_pairs()) == [((0, 0), (0, 1)), ((0, 0, 0), (0, 0, 1))]
    assert search.pair_count == 2
    assert [n for n, st in stats.items() if st.selections] == [(1,)] and queue == []

    search, queue = _search(_sampler("preset=paper"))
    stats = search.tree.stats
    assert {n: stats[n].visits for n in [(0,), (0, 0), (1,), (1, 1)]} == {(0,): 5, (0, 0): 3, (1,): 7, (1, 1): 3}
    assert sorted(search.tree.qualifying_pairs()) == [((0,), (1,)), ((0, 0), (0, 1)), ((0, 0, 0), (0, 0, 1))]
    assert search.pair_count == 3
    chosen = [n for n in [(0, 0, 0), (0, 0, 1)] if stats[n].visits == 2]
    assert len(chosen) == 1 and queue == [] and search.empty_iterations == 1


def _pairs_cli(tmp_path, name, *overrides):
    out = tmp_path / f"{name}.pairs.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "post_process_training_data.py"), "--process_result",
                           "--tree_file", str(tmp_path / "math.train.None.jsonl"), "--output", str(out),
                           "pairs.histogram=false", *overrides], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    with out.open() as fh:
        return {(r["chosen_node"], r["rejected_node"]): r for r in csv.DictReader(fh)}


def test_post_processing_pairs_on_the_hand_checked_tree(tmp_path):
    """Pairs of the same tree from its dump. Post-processing drops the overflow run 1-1-1 in both modes
    (the original's history-length check), so node 1 has k = 3 runs here (the paper sampler counted 4).

    Candidate pairs (sibling values differ): (0-0-1 > 0-0-0) gap 1, (0-1 > 0-0) gap 0.5, (0 > 1) gap 0.75;
    under node 1 every value is 0 (no pair).
    default (visits = k): 0-0-x: 1 >= 1; 0-1: 1 >= 1, 0-0: 2 >= 2; 0: 3 >= floor(2**(5/3)) = 3,
      1: 3 < floor(2**2) = 4 -> (0, 1) not selected: 2 of 3 selected.
    paper (visits = 2k-1): 0: 5, 1: 5 >= 4 -> all 3 selected.
    """
    write_jsonl(tmp_path / "math.train.None.jsonl", tree_from_spec("7", SPEC))
    default = _pairs_cli(tmp_path, "default")
    paper = _pairs_cli(tmp_path, "paper", "preset=paper")
    expect = {("0-0-1", "0-0-0"), ("0-1", "0-0"), ("0", "1")}
    assert set(default) == set(paper) == expect
    assert {k for k, r in default.items() if r["selected"] == "True"} == {("0-0-1", "0-0-0"), ("0-1", "0-0")}
    assert {k for k, r in paper.items() if r["selected"] == "True"} == expect
    top_default, top_paper = default[("0", "1")], paper[("0", "1")]
    assert (top_default["chosen_visits"], top_default["rejected_visits"]) == ("3", "3")
    assert (top_paper["chosen_visits"], top_paper["rejected_visits"]) == ("5", "5")
    assert (top_paper["chosen_value"], top_paper["rejected_value"]) == ("0.75", "0.0")
    mixed = _pairs_cli(tmp_path, "mixed", "preset=paper", "pairs.visit_counting=fixed")
    assert {k for k, r in mixed.items() if r["selected"] == "True"} == {("0-0-1", "0-0-0"), ("0-1", "0-0")}


def test_worker_with_the_preset_records_the_originals_crash_as_a_task_error(fake_server, tmp_path):
    """With preset=paper a window whose leaves share a new terminal node (or re-run an early failure)
    makes the original's stats update fail: the worker records that task as `status=error` naming the
    original's assertion (the original's worker died there) and goes on with the next task. With
    `update_rows=fixed` given explicitly the same settings sample every task."""
    from densepolicy.sampling.worker import run_worker
    from tests.harness import fakes

    base = [*SCRIPTED_ENV_ARGS, "in_context_number=0",
            "base=3", "max_steps=4", "window_size=4", "max_sample_number=6", "max_tasks=6", "preset=paper"]
    server = fake_server(fakes.scripted_reply)
    results = {}
    for name, extra in [("paper", []), ("paper_fixed_rows", ["update_rows=fixed"])]:
        cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", base + extra)
        run_worker(cfg, "fake", server.base_url, 0, 1, tmp_path / name)
        with (tmp_path / name / "gsm8k.train.0.csv").open(newline="") as fh:
            results[name] = list(csv.DictReader(fh))
    crashed = [r for r in results["paper"] if r["status"] == "error"]
    assert crashed and all("OriginalCrash" in r["extra"] and "len(child_values) > 0" in r["extra"] for r in crashed)
    assert len(results["paper_fixed_rows"]) == 6 and {r["status"] for r in results["paper_fixed_rows"]} == {"done"}


def test_preset_paper_selects_pairs_bit_for_bit_like_the_original(tmp_path):
    """Nodes 0 and 1 with 10 leaves each, 7 and 2 of them solved: values 0.7 and 0.2, a gap of
    0.7 - 0.2 = 0.49999999999999994. The original (exact `>= 0.5`) does not select the pair 0 > 1, so
    preset=paper does not; the default's tolerance (docs/deviations.md) selects it."""
    spec = {"0": {str(i): "S" if i < 7 else "F" for i in range(10)},
            "1": {str(i): "S" if i < 2 else "F" for i in range(10)}}
    write_jsonl(tmp_path / "math.train.None.jsonl", tree_from_spec("9", spec))
    default = _pairs_cli(tmp_path, "default")
    paper = _pairs_cli(tmp_path, "paper", "preset=paper")
    assert default[("0", "1")]["selected"] == "True"
    assert paper[("0", "1")]["selected"] == "False"
    assert (paper[("0", "1")]["chosen_value"], paper[("0", "1")]["rejected_value"]) == ("0.7", "0.2")
    # everything else is the same pair set
    assert set(default) == set(paper)


def test_zero3_recipe_has_the_originals_overlap_comm_and_ddp_timeout():
    """LLaMA-Factory's ZeRO-3 file (which the original used) overlaps communication with computation, and the
    original's DPO config set ddp_timeout 180000000; ddp_timeout is a transformers TrainingArguments key."""
    import dataclasses
    import json

    import yaml
    from transformers import TrainingArguments
    ds = json.loads((ROOT / "TreeDPO" / "configs" / "ds_z3_config.json").read_text())
    assert ds["zero_optimization"]["overlap_comm"] is True and ds["zero_optimization"]["stage"] == 3
    recipe = yaml.safe_load((ROOT / "TreeDPO" / "configs" / "gpu_full_zero3.yaml").read_text())
    assert recipe["ddp_timeout"] == 180000000
    assert "ddp_timeout" in {f.name for f in dataclasses.fields(TrainingArguments)}


def test_preset_paper_draws_in_context_examples_per_first_step_node(fake_server, tmp_path):
    """The original builds the opening (and draws its in-context examples) for every first-step node;
    preset=paper does the same (incontext_draw=first_step), the default draws once per task. Every deeper
    request continues the opening of its own first step."""
    from densepolicy.sampling.worker import run_worker
    from tests.harness import fakes

    base = [*SCRIPTED_ENV_ARGS, "in_context_number=3",
            "base=3", "max_steps=3", "window_size=4", "max_sample_number=2", "max_tasks=1", "update_rows=fixed"]

    def openings(name, *extra):
        server = fake_server(fakes.scripted_reply)
        cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", base + list(extra))
        run_worker(cfg, "fake", server.base_url, 0, 1, tmp_path / name)
        found = set()
        for request in server.requests:
            messages = request["messages"]
            end = next(i for i, m in enumerate(messages) if "Now, let's move on to the next task." in m["content"])
            found.add(tuple(m["content"] for m in messages[:end + 1]))
        return found
    assert len(openings("default")) == 1
    assert len(openings("paper", "preset=paper")) == 3          # one draw per first-step label 0, 1, 2
    assert len(openings("draw", "incontext_draw=first_step")) == 3


def test_the_originals_first_queue_filter_raises_on_an_empty_table():
    """docs/deviations.md: the published original cannot start a tree. Its `remove_run_subsequence` filters
    the first queue against the still empty results table with `DataFrame.apply(..., axis=1)`, which on an
    empty frame returns a DataFrame; `not result.any()` then raises. Reproduced with the original's column
    set and row test (our sampler starts from the de-duplicated first queue instead)."""
    pd = pytest.importorskip("pandas")
    table = pd.DataFrame(columns=["full_index", "run_index", "res_cur", "steps", "history", "policies", "log_infos"])

    def check_subsequence(row, proposal):
        run = row["run_index"]
        return proposal[:len(run)] == run if row["res_cur"] else len(proposal) <= len(run) and run[:len(proposal)] == proposal
    detected = table.apply(check_subsequence, proposal=(0, 0, 0), axis=1)
    assert isinstance(detected, pd.DataFrame)
    with pytest.raises(ValueError, match="truth value of a Series is ambiguous"):
        if not detected.any():
            pass


def test_right_stripped_action_code_runs_like_the_originals_left_stripped_code():
    """docs/deviations.md: preset=paper keeps our right-strip of the action code; the original only
    left-strips, but whitespace after the last statement is no statement, so the sandbox prints the same."""
    from agents.parser import parse_generation
    from envs import load_env
    env = load_env("gsm8k", split="test")
    original_code = "x = 6 * 7\nprint(x)\n\n   \n"            # what the original executed (left-stripped only)
    ours = parse_generation(f"Action:\n{original_code}End Action").content
    assert ours == original_code.rstrip()
    observations = []
    for code in (original_code, ours):
        episode = env.start("0")
        try:
            observations.append(episode.act(code).observation)
        finally:
            episode.close()
    env.close()
    assert observations[0] == observations[1] == "42\n"
