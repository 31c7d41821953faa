"""The pure tree search (agents/tree.py) on small hand-checked trees."""
import math
import random

import pytest

from agents.tree import (MCValueTree, RunIndex, Run, TreeRules, TreeSearch, branch_temperature, node_key,
                         parse_node_key, propose)


def _tree(**kw):
    tree = MCValueTree(TreeRules(base=2, max_steps=3, **kw))
    for run, y in [((0, 0, 0), 0), ((1, 0, 0), 1), ((0, 1), 1)]:
        tree.update(run, y)
    return tree


def test_temperature_map_and_node_keys():
    temps = [branch_temperature(k) for k in range(10)]
    assert temps == [0.0, 1.0, 0.5, 0.7, 1.0, 0.5, 0.7, 1.0, 0.5, 0.7]
    assert branch_temperature(0, "sampling") == 1.0
    assert node_key((3, 0, 1)) == "3-0-1" and parse_node_key("3-0-1") == (3, 0, 1) and parse_node_key("") == ()


def test_values_are_means_of_children_not_of_leaves():
    tree = _tree()
    s = tree.stats
    assert s[(0,)].value == 0.5 and s[(0,)].runs == 2          # mean(value(0,0)=0, value(0,1)=1)
    assert s[(0,)].avg_remaining == 1.5                         # remaining depths 2 and 1
    tree.update((0, 0, 1), 1)
    assert s[(0, 0)].value == 0.5 and s[(0, 0)].runs == 2
    assert s[(0,)].value == 0.75                                # mean(0.5, 1); leaf mean would be 2/3
    assert s[(0,)].score_sum / s[(0,)].runs == pytest.approx(2 / 3)


def test_visit_counting_fixed_vs_faithful():
    fixed, faithful = _tree(), _tree(visit_counting="faithful")
    assert fixed.stats[(0,)].visits == 2 and faithful.stats[(0,)].visits == 3      # 2k-1
    for t in (fixed, faithful):
        t.update((0, 0, 1), 1)
    assert fixed.stats[(0,)].visits == 3 and faithful.stats[(0,)].visits == 5
    before = {n: st.visits for n, st in faithful.stats.items()}
    chosen = faithful.select(random.Random(0))
    assert faithful.stats[chosen].visits == before[chosen] + 1      # the original counts selections as visits
    c2 = fixed.select(random.Random(0))
    assert fixed.stats[c2].selections == 1 and fixed.stats[c2].visits == fixed.stats[c2].runs


def test_qualifying_pairs_hand_checked():
    tree = _tree()
    assert tree.contrast_pair_count() == 0     # (0,0) has 1 run but needs floor(2**1) = 2
    tree.update((0, 0, 1), 1)
    assert sorted(tree.qualifying_pairs()) == [((0, 0), (0, 1)), ((0, 0, 0), (0, 0, 1))]
    # (0,) vs (1,): gap 0.25 < 0.5; (1,) also lacks visits (needs 4)
    faithful = _tree(visit_counting="faithful")
    faithful.update((0, 0, 1), 1)
    assert faithful.contrast_pair_count() == 2


def test_selection_score_formula_and_leaf_exclusion():
    tree = _tree()
    tree.update((0, 0, 1), 1)
    expected = 0.8 * 0.25 ** 0.25 + 0.2 * 2 / 3 + 2 * math.sqrt(2) / 3   # node (1,): 1 run, gap 0.25, rem 2
    assert tree.priority((1,)) == pytest.approx(expected)
    search = TreeSearch(TreeRules(base=2, max_steps=3, window_size=2), seed=1)
    for run, y in [((0, 0, 0), 0), ((1, 0, 0), 1), ((0, 1), 1)]:
        search.record(run if len(run) == 3 else run + (0,), run, y, "success" if y else "max_steps")
    search.next_queue()
    chosen = [n for n, s in search.tree.stats.items() if s.selections]
    assert len(chosen) == 1 and len(chosen[0]) < 3 and chosen[0] != (0, 1)   # never a leaf


def test_sibling_gaps_equal_the_originals_stored_gaps():
    """The original stored each node's sibling gaps and refreshed them only on the updated path (its
    removed `gap_refresh=faithful`); values change only there, so gaps from current values are the same."""
    rng = random.Random(5)
    tree = MCValueTree(TreeRules(base=3, max_steps=4))
    stored: dict = {}
    for _ in range(200):
        run = tuple(rng.randrange(3) for _ in range(rng.randint(1, 4)))
        if any(run[:d] in tree.stats for d in range(1, len(run))) and run in tree.stats:
            continue
        tree.update(run, rng.random() < 0.4)
        for depth in range(len(run), 0, -1):  # the original's refresh: the updated node and its siblings
            node = run[:depth]
            stored.setdefault(node, [0.0] * 3)
            for label in tree.children.get(node[:-1], []):
                if label != node[-1]:
                    gap = abs(tree.stats[node].value - tree.stats[node[:-1] + (label,)].value)
                    stored[node][label] = gap
                    stored.setdefault(node[:-1] + (label,), [0.0] * 3)[node[-1]] = gap
    assert len(tree.stats) > 50
    assert all(tree.max_gap(n) == max(stored[n]) for n in tree.stats)


def test_removed_gap_refresh_key_is_refused_with_its_reason():
    from densepolicy.config import ConfigError
    from densepolicy.sampling.config import resolve_sampler_config

    with pytest.raises(ConfigError, match=r"'gap_refresh' was removed \(both of its modes grew the same trees"):
        resolve_sampler_config("codeact_agent_tree", "gsm8k", overrides=["gap_refresh=faithful"])


def test_proposals_are_distinct_full_length_extensions():
    rules = TreeRules(base=2, max_steps=3, window_size=2)
    props = propose((0,), rules, random.Random(3))
    assert len(props) == 4 == len(set(props)) and all(p[:1] == (0,) and len(p) == 3 for p in props)
    assert propose((1, 1, 1), rules, random.Random(3)) == [(1, 1, 1)]


@pytest.mark.parametrize("dedup", ["fixed", "faithful"])
def test_dedup_rules(dedup):
    index = RunIndex(dedup)
    index.add(Run((0, 1, 0), (0, 1), 1.0, "success"), terminal=True)
    index.add(Run((0, 0, 0), (0, 0, 0), 0.0, "max_steps"), terminal=True)
    index.add(Run((1, 1, 0), (1, 1), 0.0, "context_overflow"), terminal=True)
    assert index.blocked((0, 1, 1))          # follows a solved node
    assert index.blocked((0, 0, 0))          # exact failed full-length run
    assert not index.blocked((0, 0, 1))
    # an early failure: the original re-runs its extensions (they end as duplicates); fixed blocks them
    assert index.blocked((1, 1, 0)) == (dedup == "fixed")


def test_first_queue_and_duplicate_runs():
    search = TreeSearch(TreeRules(base=3, max_steps=4), seed=0)
    assert search.first_queue() == [(0, 0, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0)]
    assert search.record((0, 1, 0, 0), (0, 1), 1.0, "success")
    assert not search.record((0, 1, 2, 2), (0, 1), 1.0, "success") and search.duplicates == 1


def _simulate(rules, outcome, seed=0):
    search = TreeSearch(rules, seed)
    queue = search.first_queue()
    while not search.should_stop():
        for full in queue:
            run = full
            for d in range(1, len(full) + 1):
                if outcome(full[:d]) is not None:
                    run = full[:d]
                    break
            y = outcome(run) or 0.0
            search.record(full, run, y, "success" if y else "max_steps")
        queue = search.next_queue()
    return search


def test_stop_rules():
    succeed_on_label_1 = lambda n: 1.0 if n[-1] == 1 and len(n) >= 2 else None  # noqa: E731
    by_pairs = _simulate(TreeRules(base=3, max_steps=3, window_size=4, max_sample_number=3), succeed_on_label_1)
    assert by_pairs.pair_count >= 3 and len(by_pairs.rows) < 1000
    by_runs = _simulate(TreeRules(base=3, max_steps=3, window_size=4, max_sample_number=10 ** 6, max_runs=7),
                        succeed_on_label_1)
    assert 7 <= len(by_runs.rows) < 7 + 4
    # base 1: a single possible run, after which every proposal is a duplicate -> empty iterations
    by_empty = _simulate(TreeRules(base=1, max_steps=2, max_empty_iterations=5), lambda n: None)
    assert len(by_empty.rows) == 1 and by_empty.empty_iterations == 5


def test_a_tree_whose_runs_all_agree_stops_after_stop_if_uniform_after_runs():
    never = lambda n: None  # noqa: E731  (every run fails at max depth)
    rules = dict(base=3, max_steps=3, window_size=4, max_sample_number=10 ** 6, max_runs=200)
    uniform = _simulate(TreeRules(**rules, stop_if_uniform_after=6), never)
    assert 6 <= len(uniform.rows) < 6 + 4 and uniform.uniform()
    assert len(_simulate(TreeRules(**rules), never).rows) > 20  # off (0, the original): the run cap decides
    # one success among the runs: the tree is mixed and keeps its budget
    mixed = _simulate(TreeRules(**{**rules, "max_runs": 40}, stop_if_uniform_after=6),
                      lambda n: 1.0 if n[:2] == (1, 1) else None)
    assert not mixed.uniform() and len(mixed.rows) > 10


def test_same_seed_same_search():
    outcome = lambda n: 1.0 if sum(n) % 4 == 3 else None  # noqa: E731
    rules = TreeRules(base=4, max_steps=4, window_size=3, max_sample_number=6, max_runs=60)
    a, b = _simulate(rules, outcome, seed=9), _simulate(rules, outcome, seed=9)
    assert [r.full_index for r in a.rows] == [r.full_index for r in b.rows]


# -- arithmetic=faithful (preset=paper): the original's floats in the sampler too ---------------------------

def _ten_and_ten(arithmetic):
    """Nodes (0,) and (1,) with 10 leaf children each: 7 of 10 and 2 of 10 succeeded (values 0.7, 0.2)."""
    tree = MCValueTree(TreeRules(base=10, max_steps=2, arithmetic=arithmetic))
    for first, successes in ((0, 7), (1, 2)):
        for k in range(10):
            tree.update((first, k), 1.0 if k < successes else 0.0)
    return tree


def test_faithful_sampler_does_not_count_a_gap_of_0_7_minus_0_2():
    fixed, faithful = _ten_and_ten("fixed"), _ten_and_ten("faithful")
    assert faithful.stats[(0,)].value == 0.7 and faithful.stats[(1,)].value == 0.2
    leaf_pairs = 7 * 3 + 2 * 8                      # success/failure leaves under the same parent (gap 1)
    assert faithful.contrast_pair_count() == leaf_pairs        # 0.49999999999999994 < 0.5, as the original
    assert fixed.contrast_pair_count() == leaf_pairs + 1       # the default's tolerance counts (0,)-(1,)


def test_faithful_sampler_value_is_np_mean_in_label_order():
    """Children values [1, 0.5, 0, 0.5, 1/3, 1, 0.5, 0.5] (labels 0..7, updated in a shuffled order): np.mean
    gives 0.5416666666666666, a plain sum / 8 gives 0.5416666666666667."""
    import numpy as np
    runs = [((0, 0), 1), ((0, 1, 0), 1), ((0, 1, 1), 0), ((0, 2), 0), ((0, 3, 0), 1), ((0, 3, 1), 0),
            ((0, 4, 0), 1), ((0, 4, 1), 0), ((0, 4, 2), 0), ((0, 5), 1), ((0, 6, 0), 1), ((0, 6, 1), 0),
            ((0, 7, 0), 1), ((0, 7, 1), 0)]
    random.Random(3).shuffle(runs)
    runs.sort(key=lambda r: r[0][1] == 7)            # a run through the last child comes last: all children final
    values = {}
    for arithmetic in ("fixed", "faithful"):
        tree = MCValueTree(TreeRules(base=8, max_steps=3, arithmetic=arithmetic))
        for run, y in runs:
            tree.update(run, y)
        values[arithmetic] = tree.stats[(0,)].value
    children = [1.0, 0.5, 0.0, 0.5, 1 / 3, 1.0, 0.5, 0.5]
    assert values["faithful"] == float(np.mean(children)) == 0.5416666666666666
    assert values["fixed"] == sum(children) / 8 == 0.5416666666666667


def test_faithful_selection_score_groups_the_depth_term_like_the_original():
    """The original computes 0.2 * (avg_rem / depth); for avg_rem 1, depth 5 this is 0.04000000000000001,
    while (0.2 * 1) / 5 is 0.04: the selection's argmax can differ on such near-ties."""
    assert 0.2 * (1 / 5) != 0.2 * 1 / 5
    for arithmetic, depth_term in (("faithful", 0.2 * (1 / 5)), ("fixed", 0.2 * 1 / 5)):
        tree = MCValueTree(TreeRules(base=2, max_steps=5, arithmetic=arithmetic))
        tree.update((0, 0), 0.0)                     # node (0,): avg remaining depth 1, no sibling, 1 run
        assert tree.priority((0,)) == 0.8 * 0.0 ** 0.25 + depth_term + 2.0 * math.sqrt(2) / 3


def test_a_shard_recorded_with_the_removed_gap_refresh_key_still_resumes():
    from densepolicy.sampling.config import resolve_sampler_config
    from densepolicy.sampling.shard_identity import settings_diffs, shard_settings

    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k")
    for mode in ("fixed", "faithful"):
        old = {**shard_settings(cfg, "m"), "gap_refresh": mode}
        assert settings_diffs(old, shard_settings(cfg, "m")) == []
    assert settings_diffs({**shard_settings(cfg, "m"), "dedup": "faithful"}, shard_settings(cfg, "m"))
