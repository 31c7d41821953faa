"""Node values, visits and the sibling pair rule on hand-made trees (docs/original.md §3.4, §6.1)."""
from __future__ import annotations

import pytest

from densepolicy.postprocess.pairs import task_pairs
from densepolicy.testing.synthetic_trees import tree_from_spec
from agents.tree_rules import (PairRule, TreeError, candidate_pairs, compute_node_stats,
                                    count_qualifying_pairs, qualifying_pairs)


def pair_ids(pairs):
    return sorted((p.chosen.node_id, p.rejected.node_id) for p in pairs)


def test_values_are_mean_of_children_not_visit_weighted():
    # node 0 has children: 0-0 (3 runs: S,F,F -> 1/3) and 0-1 (S -> 1): mean of children = 2/3,
    # while the Monte-Carlo success rate over its 4 runs would be 2/4.
    stats = compute_node_stats(tree_from_spec("t", {"0": {"0": {"0": "S", "1": "F", "2": "F"}, "1": "S"}}))
    assert stats["0-0"].value == pytest.approx(1 / 3)
    assert stats["0"].value == pytest.approx(2 / 3)
    assert stats["0"].runs == 4 and stats["0-0"].runs == 3 and stats["0-1"].runs == 1
    # remaining depth of node 0: leaves at depth 3,3,3 and 2 -> (2+2+2+1)/4
    assert stats["0"].avg_remaining_depth == pytest.approx(7 / 4)
    assert stats["0-1"].avg_remaining_depth == 0


def test_known_pairs_and_visit_threshold():
    spec = {"0": {"0": "S", "1": "S"},           # value 1, 2 runs, avg rem 1 -> needs 2 visits: ok
            "1": {"0": "F", "1": "F"},           # value 0, 2 runs: ok
            "2": {"0": "S"}}                     # value 1 but only 1 run with avg rem 1 -> untrusted
    stats = compute_node_stats(tree_from_spec("t", spec))
    pairs = candidate_pairs(stats, PairRule())
    assert pair_ids(pairs) == [("0", "1"), ("2", "1")]
    selected = {(p.chosen.node_id, p.rejected.node_id): p.selected for p in pairs}
    assert selected == {("0", "1"): True, ("2", "1"): False}
    assert count_qualifying_pairs(stats) == 1


def test_original_visit_counting_2k_minus_1_lowers_the_bar():
    # one run through node "2" (avg rem 1): runs counting gives 1 < 2, original 2k-1 = 1 too;
    # with 2 runs and avg remaining depth 2 (threshold 4): runs 2 < 4 but 2k-1 = 3 < 4; 3 runs: 3 vs 5.
    spec = {"0": {"0": {"0": "S"}, "1": {"0": "S"}, "2": {"0": "S"}},
            "1": {"0": {"0": "F"}, "1": {"0": "F"}, "2": {"0": "F"}}}
    stats = compute_node_stats(tree_from_spec("t", spec))
    assert stats["0"].avg_remaining_depth == 2
    assert stats["0"].visits("runs") == 3 and stats["0"].visits("original") == 5
    assert count_qualifying_pairs(stats, PairRule(visit_counting="runs")) == 0   # 3 < 4
    assert count_qualifying_pairs(stats, PairRule(visit_counting="original")) == 1  # 5 >= 4


def test_thre_max_caps_the_visit_threshold():
    deep = {"0": {"0": {"0": {"0": {"0": "S"}}}}}  # one run, avg remaining depth 4 -> min(16, cap)
    stats = compute_node_stats(tree_from_spec("t", {**deep, "1": "F"}))
    assert count_qualifying_pairs(stats, PairRule(thre_max=8)) == 0
    assert count_qualifying_pairs(stats, PairRule(thre_max=1)) == 1


def test_equal_values_give_no_pair_and_gap_below_threshold_is_not_selected():
    stats = compute_node_stats(tree_from_spec("t", {"0": "S", "1": "S", "2": {"0": "S", "1": "F"}}))
    pairs = candidate_pairs(stats)
    assert pair_ids(pairs) == [("0", "2"), ("1", "2"), ("2-0", "2-1")]  # 0 vs 1 equal: no pair
    gaps = {(p.chosen.node_id, p.rejected.node_id): p.value_gap for p in pairs}
    assert gaps == {("0", "2"): 0.5, ("1", "2"): 0.5, ("2-0", "2-1"): 1.0}
    assert all(p.selected for p in pairs)
    assert pair_ids(qualifying_pairs(stats, PairRule(thre_value=0.6))) == [("2-0", "2-1")]


def test_unvisited_and_context_overflow_siblings_are_excluded():
    spec = {"0": "S", "1": "U", "2": "X", "3": {"0": "U"}, "4": "F"}
    stats = compute_node_stats(tree_from_spec("t", spec))
    assert stats["1"].value is None and stats["2"].value is None and stats["3"].value is None
    assert stats["2"].runs == 0
    assert pair_ids(candidate_pairs(stats)) == [("0", "4")]


def test_identical_sibling_text_is_skipped_after_strip():
    nodes = tree_from_spec("t", {"0:Answer: 4": "S", "1:  Answer: 4\n": "F", "2:Answer: 5": "F"})
    _, pairs, summary = task_pairs(nodes, PairRule())
    assert pair_ids(pairs) == [("0", "2")]
    assert summary.identical_skipped == 1 and summary.selected == 1


def test_depth_one_tree_pairs_need_the_same_prompt():
    nodes = tree_from_spec("t", {"0": "S", "1": "F"})
    assert pair_ids(task_pairs(nodes, PairRule())[1]) == [("0", "1")]
    nodes[1]["prompt"] = [{"role": "user", "content": "another task"}]
    _, pairs, summary = task_pairs(nodes, PairRule())
    assert pairs == [] and summary.prompt_mismatch == 1


def test_broken_trees_raise():
    nodes = tree_from_spec("t", {"0": {"0": "S"}})
    with pytest.raises(TreeError, match="duplicate node id '0'"):
        compute_node_stats(nodes + [dict(nodes[0])])
    with pytest.raises(TreeError, match="parent '0'"):
        compute_node_stats(nodes[1:])
