"""PNG figures of the pair extraction: pairs-per-task histogram and a task's tree (matplotlib only).

The tree layout is a simple tidy layout (no graphviz): leaves take consecutive x positions in
depth-first order, an inner node sits at the mean x of its children, y = -depth. A virtual root
("task") joins the first-step nodes.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from agents.tree_rules import NodeStats, PairRule, SiblingPair


def pairs_histogram(selected_per_task: Iterable[int], path: str | os.PathLike, title: str = "") -> Path:
    """Histogram of selected pairs per task, with its own bar for tasks without pairs."""
    counts = list(selected_per_task)
    fig, ax = plt.subplots(figsize=(7, 4))
    zero = sum(1 for c in counts if c == 0)
    nonzero = [c for c in counts if c > 0]
    ax.bar([0], [zero], width=0.8, color="#bbbbbb", label=f"0 pairs ({zero} tasks)")
    if nonzero:
        top = max(nonzero)
        bins = [b + 0.5 for b in range(0, top + 1)] if top <= 60 else 30  # one bar per count when few
        ax.hist(nonzero, bins=bins, range=(0.5, top + 0.5), color="#4c72b0",
                label=f">0 pairs ({len(nonzero)} tasks)")
    ax.set_xlabel("selected pairs per task")
    ax.set_ylabel("tasks")
    ax.set_title(title or f"{len(counts)} tasks, {sum(counts)} selected pairs")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tree_layout(stats: Mapping[str, NodeStats]) -> dict[str, tuple[float, float]]:
    """(x, y) of every node: leaves in depth-first order, parents centred over their children."""
    pos: dict[str, tuple[float, float]] = {}
    next_x = 0.0
    roots = sorted((n for n in stats.values() if not n.parent_id), key=lambda n: (n.label, n.node_id))
    stack: list[tuple[str, bool]] = [(n.node_id, False) for n in reversed(roots)]
    while stack:  # iterative post-order (trees can be deep)
        node_id, expanded = stack.pop()
        node = stats[node_id]
        if not node.children:
            pos[node_id] = (next_x, -node.depth)
            next_x += 1.0
        elif expanded:
            xs = [pos[c][0] for c in node.children]
            pos[node_id] = (sum(xs) / len(xs), -node.depth)
        else:
            stack.append((node_id, True))
            stack.extend((c, False) for c in reversed(node.children))
    return pos


def _color(node: NodeStats) -> str:
    if node.value is None:
        return "#dddddd"  # no finished run
    if node.terminal:
        return "#9be39b" if node.value >= 1 else "#f4a3a3"
    return "#a9cce3"


def plot_tree(stats: Mapping[str, NodeStats], pairs: Iterable[SiblingPair], path: str | os.PathLike,
              rule: PairRule = PairRule(), title: str = "") -> Path:
    """Draw one task's tree: value / visits in each node, selected pairs highlighted (chosen green, rejected red)."""
    pos = tree_layout(stats)
    pairs = [p for p in pairs if p.selected]
    chosen_any = {p.chosen.node_id for p in pairs}
    rejected_any = {p.rejected.node_id for p in pairs}
    both = chosen_any & rejected_any  # chosen in one pair, rejected in another
    chosen, rejected = chosen_any - both, rejected_any - both

    def highlight_color(node_id: str) -> str | None:
        if node_id in both:
            return "#ff7f0e"
        return "#2ca02c" if node_id in chosen else "#d62728" if node_id in rejected else None
    n_leaves = max(1, sum(1 for n in stats.values() if not n.children))
    depth = max((n.depth for n in stats.values()), default=1)
    fig, ax = plt.subplots(figsize=(min(60, 2 + 0.6 * n_leaves), 1.5 + 1.1 * depth))
    root = (sum(x for x, _ in pos.values()) / max(1, len(pos)), 0.0)
    for node in stats.values():
        parent_xy = pos[node.parent_id] if node.parent_id else root
        color = highlight_color(node.node_id)
        ax.plot([parent_xy[0], pos[node.node_id][0]], [parent_xy[1], pos[node.node_id][1]],
                color=color or "#999999", linewidth=2.5 if color else 0.8, zorder=1)
    small = len(stats) > 200
    for node in stats.values():
        x, y = pos[node.node_id]
        edge = highlight_color(node.node_id)
        ax.scatter([x], [y], s=60 if small else 500, c=_color(node), edgecolors=edge or "#555555",
                   linewidths=2.5 if edge else 0.8, zorder=2)
        if not small:
            value = "-" if node.value is None else f"{node.value:.2f}"
            ax.text(x, y, f"{value}\nn={node.visits(rule.visit_counting)}", ha="center", va="center",
                    fontsize=7, zorder=3)
            ax.text(x, y - 0.33, node.node_id, ha="center", va="top", fontsize=6, color="#333333", zorder=3)
    ax.scatter([root[0]], [root[1]], s=200, c="white", edgecolors="#555555", zorder=2)
    ax.text(root[0] + 0.3, root[1], "task", ha="left", va="center", fontsize=8)
    ax.set_title(title + f"\n{len(pairs)} selected pairs (chosen: green, rejected: red, both: orange); "
                 "node text: value, visits")
    ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
