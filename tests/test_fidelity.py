"""Fidelity to the original code (issue 11, item 3): each test pins one behaviour of
zhao-ht/DensePolicy@af77fbf that we reproduce, or the exact failure the original had."""
import pytest

from agents.tree import OriginalCrash, TreeRules, TreeSearch


def _window(search, queue, outcome):
    """Record every leaf of `queue`: the run ends at the first node `outcome` gives a value for."""
    for full in queue:
        run = next((full[:d] for d in range(1, len(full) + 1) if outcome(full[:d]) is not None), full)
        y = outcome(run) or 0.0
        search.record(full, run, y, "success" if y else ("fail" if len(run) < len(full) else "max_steps"))


def _depth2_terminal(node):
    """Every depth-2 node ends the episode: label 1 solves the task, the others fail."""
    return (1.0 if node[1] == 1 else 0.0) if len(node) == 2 else None


@pytest.mark.parametrize("update_rows", ["fixed", "faithful"])
def test_faithful_stats_update_fails_like_the_original_after_a_duplicate(update_rows):
    """The original updates its stats with the last len(previous queue) rows. When a leaf of the window
    repeated an explored run index it was skipped, so that tail holds an already counted row whose
    leaf has no children, and `assert len(child_values) > 0` (update_node_score) kills the worker.
    It never double-counts. `fixed` updates with exactly the new rows and goes on."""
    rules = TreeRules(base=3, max_steps=3, window_size=8, update_rows=update_rows, max_sample_number=10 ** 6)
    search = TreeSearch(rules, seed=0)
    _window(search, search.first_queue(), _depth2_terminal)
    queue = search.next_queue()
    # the window holds all open (c, a, b) of the chosen node c; several share a terminal (c, a)
    _window(search, queue, _depth2_terminal)
    assert search.duplicates > 0
    if update_rows == "faithful":
        with pytest.raises(OriginalCrash, match="len\\(child_values\\) > 0"):
            search.next_queue()
    else:
        search.next_queue()
        assert all(s.runs == sum(r.run_index[:len(n)] == n for r in search.rows)
                   for n, s in search.tree.stats.items())


def test_faithful_update_without_duplicates_is_the_plain_update():
    """Without a skipped duplicate the tail of len(queue) rows is exactly the new rows: same tree as fixed."""
    trees = []
    for update_rows in ("fixed", "faithful"):
        rules = TreeRules(base=2, max_steps=3, window_size=1, update_rows=update_rows, max_sample_number=10 ** 6)
        search = TreeSearch(rules, seed=3)
        queue = search.first_queue()
        for _ in range(4):
            _window(search, queue, lambda n: None)
            queue = search.next_queue()
        assert search.duplicates == 0 and len(search.rows) >= 4
        trees.append({n: (s.visits, s.value) for n, s in search.tree.stats.items()})
    assert trees[0] == trees[1]


@pytest.mark.parametrize("select_leaves", [False, True])
def test_faithful_stop_rule_counts_pairs_after_the_selection_visit(select_leaves):
    """The original's loop condition counts qualifying pairs after `max_MC_score_item` added its +1
    visit to the chosen node, so that visit can complete a pair and stop the task at once.

    Hand computation (base 2, max_steps 2, faithful visits): runs (0,) success (ends at depth 1) and
    (1,0) fail. (0,): value 1, visits 1, avg rem 0 -> needs min(2**0, 8) = 1 visit: trusted.
    (1,): value 0, visits 1, avg rem 1 -> needs 2: not trusted -> 0 pairs before the selection.
    Priorities 0.8*gap**0.25 + 0.2*rem/2 + 2*sqrt(1+v)/(2+v): (0,) = 0.8 + 0 + 0.943,
    (1,) = 0.8 + 0.1 + 0.943 (the maximum), leaf (1,0) = 0 + 0 + 0.943. (1,) is chosen, gets visit 2,
    and the pair ((0,), (1,)) with gap 1 qualifies: 1 pair >= max_sample_number 1 -> stop.
    """
    rules = TreeRules(base=2, max_steps=2, window_size=2, visit_counting="faithful", max_sample_number=1,
                      select_leaves=select_leaves)
    search = TreeSearch(rules, seed=0)
    _window(search, search.first_queue(), lambda n: 1.0 if n == (0,) else (0.0 if len(n) == 2 else None))
    assert search.tree.contrast_pair_count() == 0
    search.next_queue()
    assert search.tree.stats[(1,)].visits == 2
    assert search.pair_count == 1 and search.should_stop()
