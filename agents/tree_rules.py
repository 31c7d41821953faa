"""Node values, visit counts and the sibling pair rule of a sampled tree (docs/original.md §3.4, §6.1).

The one home of these rules: the tree sampler (`agents/tree.py`, incrementally, while it grows a tree)
and post-processing (`densepolicy/postprocess/pairs.py`, from a finished tree dump) both use them.

The functions here work on the node records of ONE task (the tree dump of docs/formats.md, or any
mappings with the keys `node_id`, `parent_id`, `depth`, `terminal`, `success`, `status`):

    stats = compute_node_stats(nodes)                 # {node_id: NodeStats}
    pairs = candidate_pairs(stats, PairRule())        # sibling pairs with different values
    n = count_qualifying_pairs(stats, PairRule())     # the sampler's stopping statistic

Definitions (the original's, with its visit-count quirk made optional):
- a finished run ends at a terminal node; leaf value = 1.0 if it succeeded else 0.0;
- the value of an inner node is the plain mean of its children's values (not visit-weighted);
- `runs` = finished runs through the node (= finished leaves below it, itself included);
- visits = `runs` (default) or `2*runs - 1` (the original's counting, `visit_counting="faithful"`);
- avg remaining depth = mean over those runs of (leaf depth - node depth);
- a pair (a, b) of siblings is selected when value_a - value_b >= thre_value and both have
  visits >= min(floor(2 ** avg_remaining_depth), thre_max).
Runs cut by the context limit (`status == "context_overflow"`) are not finished runs: the original
drops them in post-processing, so they neither count as visits nor as failures.
Everything is linear in the number of nodes.

One switch vocabulary for the sampler and post-processing: `fixed` (our default) or `faithful` (the
original, `preset=paper`), for both switches defined here:
- `visit_counting`: fixed = k finished runs; faithful = the original's 2k-1 (the sampler adds its +1 per
  selection on top, `agents/tree.py`);
- `arithmetic`, the one tolerance policy: fixed = a node value is the sum of its children's values (in label
  order) / their number, and values closer than `TOLERANCE` (1e-9) count as equal, also in the gap test
  (so 0.7 - 0.2 = 0.49999999999999994 reaches a 0.5 threshold); faithful = exactly the original's floats:
  `np.mean` of the children's values in label order (pairwise summation, which rounds differently from a
  plain sum for 8 or more children) and exact `!=` / `>=` comparisons (0.49999999999999994 < 0.5 is
  rejected, two values one ulp apart are a candidate pair).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Mode = Literal["fixed", "faithful"]
"""The one switch vocabulary: `fixed` = our default, `faithful` = the original's behaviour."""
MODES = ("fixed", "faithful")
VisitCounting = Mode
TOLERANCE = 1e-9
"""fixed arithmetic: values closer than this are equal (and a gap this much short of the threshold reaches it)."""


def check_mode(key: str, value: str) -> None:
    """Refuse a value outside the switch vocabulary, naming the key (old post-processing names included)."""
    if value not in MODES:
        renamed = {"runs": "fixed", "original": "faithful"}.get(value)
        hint = f" ({value!r} was renamed {renamed!r})" if renamed else ""
        raise ValueError(f"key {key!r} must be one of fixed, faithful, got {value!r}{hint}")


def node_value(child_values: Sequence[float], arithmetic: Mode = "fixed") -> float:
    """Value of an inner node from its children's values, given IN LABEL ORDER (docs/original.md §3.4):
    their plain mean; `faithful` computes it as the original did, `np.mean` (pairwise summation)."""
    if arithmetic == "faithful":
        return float(np.mean(child_values))
    return sum(child_values) / len(child_values)


def values_differ(a: float, b: float, arithmetic: Mode = "fixed") -> bool:
    """Two node values are different (faithful: exactly; fixed: by more than `TOLERANCE`)."""
    return a != b if arithmetic == "faithful" else abs(a - b) > TOLERANCE


def gap_reaches(gap: float, thre_value: float, arithmetic: Mode = "fixed") -> bool:
    """A value gap meets the threshold (faithful: `gap >= thre_value` exactly; fixed: within `TOLERANCE`)."""
    return gap >= thre_value if arithmetic == "faithful" else gap >= thre_value - TOLERANCE


def visit_threshold(avg_remaining_depth: float, thre_max: int) -> int:
    """Visits a node needs before its value is trusted: min(floor(2 ** avg remaining depth), thre_max)
    (docs/original.md §3.7, §6.1 step 5)."""
    return min(math.floor(2 ** avg_remaining_depth), thre_max)


class TreeError(ValueError):
    """The node records of a task do not form a tree (unknown parent, duplicate node id)."""


@dataclass
class NodeStats:
    """Statistics of one node, recomputed from the structure of the tree."""

    node_id: str
    parent_id: str
    depth: int
    label: int
    terminal: bool
    runs: int = 0
    """Finished runs through this node."""
    value: float | None = None
    """Leaf: 1.0/0.0; inner: mean of children's values; None if no finished run passes here."""
    avg_remaining_depth: float | None = None
    """Mean over the finished runs through this node of (leaf depth - node depth)."""
    children: list[str] = field(default_factory=list)
    leaf_depth_sum: int = 0

    def visits(self, counting: VisitCounting = "fixed") -> int:
        """Visit count under the chosen counting (`faithful` reproduces the 2k-1 quirk of docs/original.md §3.4)."""
        check_mode("visit_counting", counting)
        if counting == "faithful":
            return 2 * self.runs - 1 if self.runs else 0
        return self.runs


@dataclass(frozen=True)
class PairRule:
    """Which sibling pairs are selected (docs/original.md §6.1 step 5)."""

    thre_value: float = 0.5
    """Minimum value gap between the chosen and the rejected sibling."""
    thre_max: int = 8
    """Cap of the visit threshold min(floor(2 ** avg remaining depth), thre_max)."""
    visit_counting: VisitCounting = "fixed"
    """`fixed` = finished runs through the node; `faithful` = the original's 2k-1."""
    arithmetic: Mode = "fixed"
    """`fixed` = plain mean, comparisons within `TOLERANCE`; `faithful` = the original's np.mean, exact comparisons."""

    def __post_init__(self) -> None:
        check_mode("visit_counting", self.visit_counting)
        check_mode("arithmetic", self.arithmetic)

    def visit_threshold(self, avg_remaining_depth: float) -> int:
        """Visits a node needs before its value is trusted."""
        return visit_threshold(avg_remaining_depth, self.thre_max)

    def is_trusted(self, node: NodeStats) -> bool:
        """The node has enough visits for its average remaining depth."""
        if node.value is None or node.avg_remaining_depth is None:
            return False
        return node.visits(self.visit_counting) >= self.visit_threshold(node.avg_remaining_depth)


@dataclass(frozen=True)
class SiblingPair:
    """Two sibling nodes with different values; `chosen` has the higher value."""

    chosen: NodeStats
    rejected: NodeStats
    selected: bool

    @property
    def value_gap(self) -> float:
        return float(self.chosen.value or 0.0) - float(self.rejected.value or 0.0)  # a pair's nodes are valued


def _label(record: Mapping[str, Any]) -> int:
    if record.get("label") not in (None, ""):
        return int(record["label"])
    last = str(record["node_id"]).rsplit("-", 1)[-1]
    return int(last) if last.lstrip("-").isdigit() else 0


def is_finished_leaf(record: Mapping[str, Any]) -> bool:
    """A terminal node that ends a finished run (context-limit cuts do not count)."""
    return bool(record.get("terminal")) and record.get("status") != "context_overflow"


def compute_node_stats(nodes: Iterable[Mapping[str, Any]], arithmetic: Mode = "fixed") -> dict[str, NodeStats]:
    """Values, runs and average remaining depths of every node of one task's tree.

    `nodes` are tree-dump records (extra keys are ignored). An inner node's value is `node_value` of its
    children's values in label order (`arithmetic`, see the module docstring). Raises `TreeError` for a
    duplicate node id or a parent that is not in the tree.
    """
    check_mode("arithmetic", arithmetic)
    stats: dict[str, NodeStats] = {}
    finished: set[str] = set()
    success: dict[str, bool] = {}
    for rec in nodes:
        node_id = str(rec["node_id"])
        if node_id in stats:
            raise TreeError(f"duplicate node id {node_id!r}")
        stats[node_id] = NodeStats(node_id=node_id, parent_id=str(rec.get("parent_id") or ""),
                                   depth=int(rec["depth"]), label=_label(rec),
                                   terminal=bool(rec.get("terminal")))
        if is_finished_leaf(rec):
            finished.add(node_id)
            success[node_id] = rec.get("success") is True or rec.get("status") == "success"
    by_depth: dict[int, list[NodeStats]] = defaultdict(list)
    for node in stats.values():
        if node.parent_id:
            parent = stats.get(node.parent_id)
            if parent is None:
                raise TreeError(f"node {node.node_id!r} has parent {node.parent_id!r}, which is not in the tree")
            parent.children.append(node.node_id)
        by_depth[node.depth].append(node)
    for node in stats.values():
        node.children.sort(key=lambda c: (stats[c].label, c))
    for depth in sorted(by_depth, reverse=True):  # children before parents
        for node in by_depth[depth]:
            if node.node_id in finished:
                node.runs, node.leaf_depth_sum = 1, node.depth
                node.value = 1.0 if success[node.node_id] else 0.0
            elif not node.terminal:
                valued = [stats[c] for c in node.children if stats[c].value is not None]
                node.runs = sum(c.runs for c in valued)
                node.leaf_depth_sum = sum(c.leaf_depth_sum for c in valued)
                if valued:
                    node.value = node_value([c.value for c in valued if c.value is not None], arithmetic)
            if node.runs:
                node.avg_remaining_depth = node.leaf_depth_sum / node.runs - node.depth
    return stats


def sibling_groups(stats: Mapping[str, NodeStats]) -> dict[str, list[NodeStats]]:
    """Nodes grouped by parent id ("" = the first-step nodes), each group sorted by label."""
    groups: dict[str, list[NodeStats]] = defaultdict(list)
    for node in stats.values():
        groups[node.parent_id].append(node)
    for group in groups.values():
        group.sort(key=lambda n: (n.label, n.node_id))
    return groups


def candidate_pairs(stats: Mapping[str, NodeStats], rule: PairRule = PairRule(),
                    texts: Mapping[str, str] | None = None) -> list[SiblingPair]:
    """All sibling pairs whose values differ, the higher value as `chosen`, with the `selected` flag.

    If `texts` (node id -> assistant message) is given, pairs whose two messages are identical
    after `strip()` are skipped ("contrast step is the same" in the original).
    """
    pairs: list[SiblingPair] = []
    for group in sibling_groups(stats).values():
        valued = [(n, n.value) for n in group if n.value is not None]
        for i, (a, value_a) in enumerate(valued):
            for b, value_b in valued[i + 1:]:
                if not values_differ(value_a, value_b, rule.arithmetic):
                    continue
                if texts is not None and texts.get(a.node_id, "").strip() == texts.get(b.node_id, "").strip():
                    continue
                if value_a > value_b:
                    chosen, rejected, gap = a, b, value_a - value_b
                else:
                    chosen, rejected, gap = b, a, value_b - value_a
                selected = (gap_reaches(gap, rule.thre_value, rule.arithmetic)
                            and rule.is_trusted(chosen) and rule.is_trusted(rejected))
                pairs.append(SiblingPair(chosen, rejected, selected))
    return pairs


def qualifying_pairs(stats: Mapping[str, NodeStats], rule: PairRule = PairRule(),
                     texts: Mapping[str, str] | None = None) -> list[SiblingPair]:
    """The selected sibling pairs (value gap and visit thresholds met)."""
    return [p for p in candidate_pairs(stats, rule, texts) if p.selected]


def count_qualifying_pairs(stats: Mapping[str, NodeStats], rule: PairRule = PairRule(),
                           texts: Mapping[str, str] | None = None) -> int:
    """Number of selected sibling pairs (the tree sampler's stopping statistic, docs/original.md §3.7)."""
    return len(qualifying_pairs(stats, rule, texts))
