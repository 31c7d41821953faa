"""The tree search of the original sampler as pure data structures (docs/original.md §3.1, §3.4-§3.7). No I/O.

    search = TreeSearch(TreeRules(base=3, max_steps=4, ...), seed=1234)   # or TreeSettings(...).rules(4)
    queue = search.first_queue()                     # (k, 0, ..., 0) for every label k
    while not search.should_stop():
        for full_index in queue: search.record(full_index, run_index, outcome, status)
        queue = search.next_queue()                  # update stats, select, propose, de-dup, sample

Indices are tuples of branch labels. A *full index* has length `max_steps`; its *run index* is the
prefix that was really executed (it ends at the first terminal node). Quirks of the original are
kept behind switches (`visit_counting`, `select_leaves`, `dedup`, `update_rows`,
`overflow_counts_as_failure`, `arithmetic`; all at once: `preset=paper`); the defaults are the fixed behaviour
(see docs/deviations.md). Where the original would have died, the faithful mode raises `OriginalCrash`.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

from agents.tree_rules import Mode, check_mode, gap_reaches, node_value, visit_threshold
from densepolicy.config import ConfigError, Range, check_ranges, help_field

NodeId = tuple[int, ...]


def node_key(node: Sequence[int]) -> str:
    """`(3, 0, 1)` -> `"3-0-1"` (the node id written to files)."""
    return "-".join(str(x) for x in node)


def parse_node_key(key: str) -> NodeId:
    """`"3-0-1"` -> `(3, 0, 1)`; `""` -> `()`."""
    return tuple(int(x) for x in key.split("-")) if key else ()


def branch_temperature(label: int, method: str = "temperature",
                       cycle: Sequence[float] = (0.7, 1.0, 0.5), greedy: float = 0.0,
                       sampling_temperature: float = 1.0) -> float:
    """Temperature of branch `label` (docs/original.md §3.1): label 0 greedy, else `cycle[label % 3]`
    (labels 1,4,7 -> 1.0; 2,5,8 -> 0.5; 3,6,9 -> 0.7). Method `sampling`: 1.0 for every label."""
    if method == "sampling":
        return sampling_temperature
    if label == 0:
        return greedy
    return cycle[label % len(cycle)]


@dataclass(frozen=True, kw_only=True)
class TreeSettings:
    """Every setting of the tree search a user chooses: their one definition (default, help, range).

    Defaults are the original's values with its quirks fixed (`preset=paper` restores them). The sampler
    config nests these as its `tree` section (densepolicy.sampling.config: `tree.base=3`, or `base=3`);
    the agent method `codeact_agent` ignores them. The depth is not here: it is the sampler's `max_steps`,
    shared with the agent's step limit (`rules(max_steps)` adds it).
    """

    base: int = help_field(10, help="Branch labels per step (labels 0..base-1).")
    max_sample_number: int = help_field(512, help="Stop a task after this many qualifying sibling pairs.")
    window_size: int = help_field(8, help="Leaves run per iteration (all in flight together).")
    contrastive_method: Literal["temperature", "sampling"] = help_field(
        "temperature", help="temperature: label -> temperature map; sampling: T=1.0 for every label.")
    temperature_cycle: list[float] = help_field(
        [0.7, 1.0, 0.5], help="Temperature of label k>=1 is temperature_cycle[k % 3] (label 0 is greedy).")
    max_runs: int = help_field(1000, help="Run cap per task (finished leaves).")
    max_empty_iterations: int = help_field(1000, help="Cap on iterations that produced no proposal.")
    proposal_factor: int = help_field(3, help="Random suffix draws = proposal_factor * proposals_per_window * window.")
    proposals_per_window: int = help_field(2, help="Distinct proposals kept before de-dup = this * window_size.")
    thre_value: float = help_field(0.5, help="Pair rule: minimum value gap.")
    thre_max: int = help_field(8, help="Pair rule: visits >= min(floor(2**avg remaining depth), thre_max).")
    gap_weight: float = help_field(0.8, help="Selection: weight of max sibling gap ** gap_power.")
    gap_power: float = help_field(0.25, help="Selection: exponent of the sibling gap.")
    depth_weight: float = help_field(0.2, help="Selection: weight of avg remaining depth / max_steps.")
    explore_weight: float = help_field(2.0, help="Selection: weight of sqrt(1+v)/(2+v).")
    visit_counting: Mode = help_field(
        "fixed", help="fixed: visits = finished runs; faithful: the original's +2 per revisit, +1 per selection.")
    select_leaves: bool = help_field(
        False, help="True = the original: selection may pick nodes that cannot expand (terminal or full depth).")
    dedup: Mode = help_field(
        "fixed", help="fixed: every finished run blocks its extensions; faithful: only successful runs "
                      "(docs/original.md §3.6).")
    update_rows: Mode = help_field(
        "fixed", help="fixed: update stats with the new runs; faithful: the original's update with the last "
                      "len(queue) rows, which ends the task with an error (OriginalCrash) after a duplicate run "
                      "(as the original crashed). Without that failure the tail is exactly the new rows.")
    overflow_counts_as_failure: bool = help_field(
        False, help="True = the original: a context-overflow run is a failed leaf in the value tree.")
    arithmetic: Mode = help_field(
        "fixed", help="fixed: node value = plain mean of the children, values within 1e-9 are equal (also in the "
                      "pair gap test); faithful: the original's floats (np.mean in label order, exact comparisons, "
                      "its rounding of the selection score). See agents.tree_rules.")
    stop_if_uniform_after: int = help_field(
        0, help="> 0: stop a tree once this many runs finished all with the same outcome (all solved or all "
                "failed: no sibling pair possible), so its budget goes to other tasks; 0 = never (the original).")

    def __post_init__(self) -> None:
        for name in ("visit_counting", "dedup", "update_rows", "arithmetic"):
            check_mode(name, getattr(self, name))
        check_ranges(self, TREE_RANGES)
        if not self.temperature_cycle:
            raise ConfigError("key 'temperature_cycle' must not be empty")

    def rules(self, max_steps: int) -> TreeRules:
        """These settings with the tree depth `max_steps`."""
        return TreeRules(max_steps=max_steps, **{f.name: getattr(self, f.name) for f in fields(TreeSettings)})


TREE_RANGES: dict[str, Range] = {
    "base": (1, None, False), "max_sample_number": (1, None, False), "window_size": (1, None, False),
    "temperature_cycle": (0, None, False), "max_runs": (1, None, False), "max_empty_iterations": (1, None, False),
    "proposal_factor": (1, None, False), "proposals_per_window": (1, None, False), "thre_value": (0, 1, False),
    "thre_max": (1, None, False), "gap_weight": (0, None, False), "gap_power": (0, None, True),
    "depth_weight": (0, None, False), "explore_weight": (0, None, False), "stop_if_uniform_after": (0, None, False),
}
"""The range of every numeric tree setting (densepolicy.config.check_ranges)."""


@dataclass(frozen=True, kw_only=True)
class TreeRules(TreeSettings):
    """Every constant of the tree search: the settings and the depth (`TreeRules(base=3, max_steps=4)`)."""

    max_steps: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, {"max_steps": (1, None, False)})


class OriginalCrash(RuntimeError):
    """The original code would have died here (an `AssertionError`); raised by `faithful` modes only."""


@dataclass
class NodeStats:
    """Statistics of one node of the value tree (docs/original.md §3.4)."""

    visits: int = 0
    runs: int = 0
    selections: int = 0
    score_sum: float = 0.0
    value: float = 0.0
    outcomes: list[float] = field(default_factory=list)
    remaining: list[int] = field(default_factory=list)
    avg_remaining: float = 0.0


@dataclass(frozen=True)
class Run:
    """One finished leaf run: the proposal, the executed prefix, the outcome and the end status."""

    full_index: NodeId
    run_index: NodeId
    outcome: float
    status: str = ""
    in_tree: bool = True


class MCValueTree:
    """Monte-Carlo value tree: leaf value = outcome, node value = mean of its children's values."""

    def __init__(self, rules: TreeRules) -> None:
        self.rules = rules
        self.stats: dict[NodeId, NodeStats] = {}
        self.children: dict[NodeId, list[int]] = {}

    def update(self, run_index: NodeId, outcome: float) -> None:
        """Add one finished run, from the leaf upward (docs/original.md §3.4)."""
        y = float(outcome)
        faithful = self.rules.visit_counting == "faithful"
        for depth in range(len(run_index), 0, -1):
            node = run_index[:depth]
            rem = len(run_index) - depth
            s = self.stats.get(node)
            if s is None:
                s = NodeStats(visits=1, runs=1, score_sum=y, value=y, outcomes=[y], remaining=[rem],
                              avg_remaining=float(rem))
                self.stats[node] = s
                self.children.setdefault(node[:-1], []).append(node[-1])
            else:
                s.visits += 2 if faithful else 1
                s.runs += 1
                s.score_sum += y
                kids = sorted(self.children.get(node, []))  # label order, as the original's child list
                s.value = (node_value([self.stats[node + (k,)].value for k in kids], self.rules.arithmetic)
                           if kids else s.score_sum / s.runs)
                s.outcomes.append(y)
                s.remaining.append(rem)
                s.avg_remaining = sum(s.remaining) / len(s.remaining)

    def max_gap(self, node: NodeId) -> float:
        """Largest value gap to a sibling, from the current values (the original stored the gaps and refreshed
        them on the updated path, which is where values change: the same numbers, docs/deviations.md)."""
        value = self.stats[node].value
        gaps = [abs(value - self.stats[node[:-1] + (k,)].value)
                for k in self.children.get(node[:-1], []) if k != node[-1]]
        return max(gaps, default=0.0)

    def visit_threshold(self, node: NodeId) -> int:
        """Visits needed before the node's value is trusted: min(floor(2 ** avg_remaining), thre_max)."""
        return visit_threshold(self.stats[node].avg_remaining, self.rules.thre_max)

    def qualifying_pairs(self) -> list[tuple[NodeId, NodeId]]:
        """Sibling pairs with |value gap| >= thre_value whose both sides have enough visits."""
        pairs = []
        trusted = {n for n, s in self.stats.items() if s.visits >= self.visit_threshold(n)}
        for parent, labels in self.children.items():
            for i, a in enumerate(labels):
                na = parent + (a,)
                if na not in trusted:
                    continue
                for b in labels[i + 1:]:
                    nb = parent + (b,)
                    if nb in trusted and gap_reaches(abs(self.stats[na].value - self.stats[nb].value),
                                                     self.rules.thre_value, self.rules.arithmetic):
                        pairs.append((na, nb) if a < b else (nb, na))
        return pairs

    def contrast_pair_count(self) -> int:
        """Number of qualifying sibling pairs (the stopping statistic)."""
        return len(self.qualifying_pairs())

    def priority(self, node: NodeId) -> float:
        """Selection score of docs/original.md §3.5 (exploration bonus from visits, plus selections when fixed)."""
        r, s = self.rules, self.stats[node]
        visits = s.visits if r.visit_counting == "faithful" else s.runs + s.selections
        # faithful: the original's grouping 0.2 * (avg_rem / depth), which can round differently
        depth_term = (r.depth_weight * (s.avg_remaining / r.max_steps) if r.arithmetic == "faithful"
                      else r.depth_weight * s.avg_remaining / r.max_steps)
        return (r.gap_weight * self.max_gap(node) ** r.gap_power + depth_term
                + r.explore_weight * math.sqrt(1 + visits) / (2 + visits))

    def select(self, rng: random.Random, expandable: Iterable[NodeId] | None = None) -> NodeId | None:
        """Argmax of the priority (ties broken uniformly at random); counts the selection."""
        candidates = list(self.stats) if expandable is None else list(expandable)
        if not candidates:
            return None
        scores = [self.priority(n) for n in candidates]
        best = max(scores)
        chosen = rng.choice([n for n, sc in zip(candidates, scores) if sc == best])
        if self.rules.visit_counting == "faithful":
            self.stats[chosen].visits += 1
        else:
            self.stats[chosen].selections += 1
        return chosen


def propose(prefix: NodeId, rules: TreeRules, rng: random.Random) -> list[NodeId]:
    """Up to N = proposals_per_window * window_size distinct full-length indices extending `prefix`,
    from at most proposal_factor * N random draws (docs/original.md §3.6)."""
    wanted = rules.proposals_per_window * rules.window_size
    length = rules.max_steps - len(prefix)
    seen: dict[NodeId, None] = {}
    for _ in range(rules.proposal_factor * wanted):
        seen.setdefault(tuple(rng.randrange(rules.base) for _ in range(length)), None)
        if len(seen) >= wanted:
            break
    return [prefix + suffix for suffix in seen]


class RunIndex:
    """The explored runs, indexed for the de-duplication rules of docs/original.md §3.6."""

    def __init__(self, dedup: Mode) -> None:
        self.dedup = dedup
        self.runs: set[NodeId] = set()
        self.blocking_ends: set[NodeId] = set()   # runs whose extensions are blocked
        self.covered: set[NodeId] = set()         # prefixes (incl. self) of every blocking/failed run

    def add(self, run: Run, terminal: bool) -> None:
        self.runs.add(run.run_index)
        blocks = run.outcome > 0 or (self.dedup == "fixed" and terminal)
        if blocks:
            self.blocking_ends.add(run.run_index)
        for d in range(1, len(run.run_index) + 1):
            self.covered.add(run.run_index[:d])

    def blocked(self, proposal: NodeId) -> bool:
        """True if the proposal would only repeat explored work."""
        if proposal in self.covered:
            return True
        return any(proposal[:d] in self.blocking_ends for d in range(1, len(proposal) + 1))


class TreeSearch:
    """The per-task main loop of docs/original.md §3.7 as a state machine; the caller runs the leaves."""

    def __init__(self, rules: TreeRules, seed: int) -> None:
        self.rules = rules
        self.rng = random.Random(seed)
        self.tree = MCValueTree(rules)
        self.rows: list[Run] = []
        self.index = RunIndex(rules.dedup)
        self.duplicates = 0
        self.empty_iterations = 0
        self.iterations = 0
        self._new_rows: list[Run] = []
        self._last_queue_len = 0
        self._pairs = 0

    def first_queue(self) -> list[NodeId]:
        """The `base` first-step variants (k, 0, ..., 0)."""
        queue = [(k,) + (0,) * (self.rules.max_steps - 1) for k in range(self.rules.base)]
        self._last_queue_len = len(queue)
        return queue

    def record(self, full_index: NodeId, run_index: NodeId, outcome: float, status: str = "",
               in_tree: bool | None = None) -> bool:
        """Add a finished leaf run; returns False (and ignores it) if its run index was seen before.
        `in_tree` (default: by `overflow_counts_as_failure` for status `context_overflow`, else True)
        says whether the run enters the value tree."""
        if in_tree is None:
            in_tree = status != "context_overflow" or self.rules.overflow_counts_as_failure
        if run_index in self.index.runs:
            self.duplicates += 1
            return False
        run = Run(tuple(full_index), tuple(run_index), float(outcome), status, in_tree)
        terminal = len(run_index) < self.rules.max_steps or status in ("success", "fail", "context_overflow")
        self.index.add(run, terminal)
        self.rows.append(run)
        self._new_rows.append(run)
        return True

    def next_queue(self) -> list[NodeId]:
        """Update the statistics, select a node, propose, de-duplicate and sample `window_size`."""
        self.iterations += 1
        if self.rules.update_rows == "faithful":
            self._check_original_update()
        for run in self._new_rows:
            if run.in_tree:
                self.tree.update(run.run_index, run.outcome)
        self._new_rows = []
        expandable = None
        if not self.rules.select_leaves:
            expandable = [n for n in self.tree.stats
                          if len(n) < self.rules.max_steps and n not in self.index.runs]
        chosen = self.tree.select(self.rng, expandable)
        # counted after the selection, as the original's loop condition does: with faithful visit
        # counting the chosen node's +1 can complete a pair (with fixed counting it changes nothing)
        self._pairs = self.tree.contrast_pair_count()
        queue: list[NodeId] = []
        if chosen is not None:
            kept = [p for p in propose(chosen, self.rules, self.rng) if not self.index.blocked(p)]
            queue = self.rng.sample(kept, min(len(kept), self.rules.window_size))
        if not queue:
            self.empty_iterations += 1
        self._last_queue_len = len(queue)
        return queue

    def _check_original_update(self) -> None:
        """The original updates the stats with the last len(previous queue) rows. If a leaf of that
        queue repeated an explored run index it was skipped, so the tail reaches back to a row that was
        already counted; re-updating its leaf (which has no children) fails `assert len(child_values) > 0`
        in `update_node_score` and the worker dies. It never double-counts."""
        tail = min(self._last_queue_len, len(self.rows))
        if tail > len(self._new_rows):
            old = self.rows[-tail]
            raise OriginalCrash(
                f"update_rows=faithful: {tail - len(self._new_rows)} leaf run(s) of the last window repeated an "
                f"explored run index, so the original's update with the last {tail} rows re-updates run "
                f"{node_key(old.run_index)!r}, whose leaf has no children, and fails `assert len(child_values) > 0`: "
                "the original's worker died on this task (use update_rows=fixed to sample it)")

    @property
    def pair_count(self) -> int:
        """Qualifying pairs as of the last statistics update."""
        return self._pairs

    def should_stop(self) -> bool:
        """Enough pairs, the run cap, or the empty-iteration cap (docs/original.md §3.7); or, with stop_if_uniform_after,
        that many runs all with the same outcome."""
        r = self.rules
        return (self._pairs >= r.max_sample_number or len(self.rows) >= r.max_runs
                or self.empty_iterations >= r.max_empty_iterations or self.uniform())

    def uniform(self) -> bool:
        """stop_if_uniform_after runs (or more) have finished and every one had the same outcome."""
        n = self.rules.stop_if_uniform_after
        return bool(n) and len(self.rows) >= n and len({r.outcome for r in self.rows}) == 1

    @property
    def coverage(self) -> float:
        """1.0 if any run succeeded (the tree CSV's `score`; not accuracy)."""
        return max((r.outcome for r in self.rows), default=0.0)
