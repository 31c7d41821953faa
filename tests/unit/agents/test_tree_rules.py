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
    assert stats["0"].visits("fixed") == 3 and stats["0"].visits("faithful") == 5
    assert count_qualifying_pairs(stats, PairRule(visit_counting="fixed")) == 0   # 3 < 4
    assert count_qualifying_pairs(stats, PairRule(visit_counting="faithful")) == 1  # 5 >= 4


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


# -- arithmetic: fixed (tolerance 1e-9) vs faithful (the original's floats, preset=paper) ---------------------

# node 0 has 8 children whose values, in label order, are [1, 0.5, 0, 0.5, 1/3, 1, 0.5, 0.5]: np.mean's
# pairwise summation gives 0.5416666666666666, a plain left-to-right sum / 8 gives 0.5416666666666667
EIGHT_CHILDREN = {"0": {"0": "S", "1": {"0": "S", "1": "F"}, "2": "F", "3": {"0": "S", "1": "F"},
                        "4": {"0": "S", "1": "F", "2": "F"}, "5": "S", "6": {"0": "S", "1": "F"},
                        "7": {"0": "S", "1": "F"}}}


def test_faithful_node_value_is_np_mean_of_the_children_in_label_order():
    import numpy as np
    nodes = tree_from_spec("t", EIGHT_CHILDREN)
    in_label_order = [1.0, 0.5, 0.0, 0.5, 1 / 3, 1.0, 0.5, 0.5]
    assert float(np.mean(in_label_order)) != sum(in_label_order) / 8           # the case worth testing
    shuffled = list(reversed(nodes))                                            # dump order must not matter
    faithful = compute_node_stats(shuffled, "faithful")["0"].value
    assert faithful == float(np.mean(in_label_order)) == 0.5416666666666666
    assert compute_node_stats(shuffled, "fixed")["0"].value == sum(in_label_order) / 8 == 0.5416666666666667


def _two_siblings(a_successes: int, b_successes: int) -> dict:
    """Nodes 0 and 1 with 10 leaf children each: a value of k/10 for k successes."""
    def kids(k):
        return {str(i): ("S" if i < k else "F") for i in range(10)}
    return {"0": kids(a_successes), "1": kids(b_successes)}


def test_faithful_rejects_a_gap_of_0_7_minus_0_2_like_the_original():
    """0.7 - 0.2 = 0.49999999999999994 < 0.5: the original does not select that pair; the default's
    tolerance does (docs/deviations.md)."""
    stats = compute_node_stats(tree_from_spec("t", _two_siblings(7, 2)), "faithful")
    assert (stats["0"].value, stats["1"].value) == (0.7, 0.2) and 0.7 - 0.2 < 0.5
    top = lambda rule: [p for p in candidate_pairs(stats, rule) if p.chosen.node_id == "0"]  # noqa: E731
    assert [p.selected for p in top(PairRule(arithmetic="faithful"))] == [False]
    assert [p.selected for p in top(PairRule(arithmetic="fixed"))] == [True]


def test_values_one_ulp_apart_are_a_candidate_pair_only_when_faithful():
    import math
    from agents.tree_rules import NodeStats
    a = NodeStats("0", "", 1, 0, False, runs=4, value=0.3, avg_remaining_depth=1.0)
    b = NodeStats("1", "", 1, 1, False, runs=4, value=math.nextafter(0.3, 1.0), avg_remaining_depth=1.0)
    stats = {"0": a, "1": b}
    pairs = candidate_pairs(stats, PairRule(arithmetic="faithful"))
    assert [(p.chosen.node_id, p.rejected.node_id, p.selected) for p in pairs] == [("1", "0", False)]
    assert candidate_pairs(stats, PairRule(arithmetic="fixed")) == []


def test_one_switch_vocabulary_refuses_unknown_names():
    with pytest.raises(ValueError, match=r"visit_counting.*'runs' was renamed 'fixed'"):
        PairRule(visit_counting="runs")
    with pytest.raises(ValueError, match="arithmetic"):
        compute_node_stats([], "exact")
