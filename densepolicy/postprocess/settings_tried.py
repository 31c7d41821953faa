"""The settings tried: one table over several finished experiments (`make experiment` output directories).

    .venv/bin/python scripts/compare_experiments.py eval_results/exp_a eval_results/exp_b [--csv FILE]

A sweep (`reuse_from`, `heldout=valid`, other DPO settings) leaves one output directory per setting; this reads
each one's `settings.json` (its config, pairs, DPO steps, held-out pair metrics) and `paired_rate_tests.csv`
(TreeDPO vs the warm start on the sampled episodes) and lines them up, one row per (experiment, dataset):
the settings that differ between the experiments, the held-out split, pairs and DPO steps, the paired effect
with its 95 % interval and p-values, and whether the row was evaluated on the same held-out task ids as the
first experiment (rows on other ids are not comparable; the column says so, it does not hide them).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from densepolicy.config import flat_keys

# Keys that name where or how a run ran, not what it computed.
NOT_A_SETTING = frozenset({"output_dir", "resume", "reuse_from", "tmux_start_id", "proc_per_server"})
TREEDPO, WARM = "warm+TreeDPO", "warm-start"


class ExperimentDirError(ValueError):
    """An experiment directory without a readable report (names the file)."""


def _named_lists_as_mappings(value: Any) -> Any:
    """A stored config with every list of per-dataset dicts (each with a "name") turned into {name: the rest}."""
    if isinstance(value, Mapping):
        return {k: _named_lists_as_mappings(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, Mapping) and "name" in v for v in value):
        return {item["name"]: _named_lists_as_mappings({k: v for k, v in item.items() if k != "name"}) for item in value}
    return value


def _flatten(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Dotted key (`config.flat_keys`) -> JSON text of every leaf of a stored config (lists of per-dataset dicts
    by their name: `datasets.babyai.sample_tasks`)."""
    return {k: json.dumps(v, sort_keys=True) for k, v in flat_keys(_named_lists_as_mappings(cfg)).items()}


def load_experiment(root: str | Path) -> dict[str, Any]:
    """settings.json and the TreeDPO-vs-warm rows of paired_rate_tests.csv of one finished experiment."""
    root = Path(root)
    path = root / "settings.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(settings, dict) or not isinstance(settings.get("config"), dict):
            raise ValueError("no 'config' object")
    except (OSError, ValueError) as exc:
        raise ExperimentDirError(f"{path}: not an experiment's settings ({exc}); run `make experiment "
                                 f"ARGS=--report-only` with output_dir={root} to write it") from None
    tests: dict[str, dict[str, str]] = {}
    rates = root / "paired_rate_tests.csv"
    if rates.is_file():
        with open(rates, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("model_a") == TREEDPO and row.get("model_b") == WARM:
                    tests[row["dataset"]] = row
    return {"root": root, "settings": settings, "rate_tests": tests}


def differing_settings(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dotted keys whose values are not the same in every config (leaves that one config lacks count too)."""
    flat = [_flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if k.split(".")[0] not in NOT_A_SETTING and len({f.get(k) for f in flat}) > 1]


def settings_tried(roots: Iterable[str | Path]) -> list[dict[str, object]]:
    """One row per (experiment, dataset evaluated with sampled episodes), in the order given."""
    runs = [load_experiment(r) for r in roots]
    keys = differing_settings([r["settings"]["config"] for r in runs])
    first_tasks = runs[0]["settings"].get("tasks", {}).get("evaluation", {}) if runs else {}
    rows: list[dict[str, object]] = []
    for run in runs:
        s, flat = run["settings"], _flatten(run["settings"]["config"])
        round1 = (s.get("rounds") or [{}])[0]
        held = round1.get("heldout_metrics") or {}
        for dataset, t in run["rate_tests"].items():
            rows.append({
                "experiment": str(run["root"]),
                "settings": "; ".join(f"{k}={flat.get(k, '(unset)')}" for k in keys)  # values as JSON
                            or "(same settings)",
                "heldout": s["config"].get("heldout", "test"),
                "dataset": dataset,
                "pairs": sum((s.get("pairs") or {}).values()),
                "dpo_steps": s.get("dpo_steps", ""),
                "heldout_pairs": round1.get("heldout_pairs", ""),
                "heldout_reward_accuracy": held.get("rewards/accuracies", ""),
                "tasks": t.get("tasks", ""), "samples_per_task": t.get("samples_per_task", ""),
                "warm_mean": t.get("mean_b", ""), "treedpo_mean": t.get("mean_a", ""),
                "effect": t.get("effect", ""), "effect_ci_low": t.get("effect_ci_low", ""),
                "effect_ci_high": t.get("effect_ci_high", ""),
                "tasks_better": t.get("tasks_a_better", ""), "tasks_worse": t.get("tasks_b_better", ""),
                "permutation_p": t.get("permutation_p", ""), "wilcoxon_p": t.get("wilcoxon_p", ""),
                "same_tasks_as_first": s.get("tasks", {}).get("evaluation", {}).get(dataset)
                                       == first_tasks.get(dataset),
                "git_commit": s.get("git_commit", ""),
                "reused_from": s.get("reused_from", ""),
            })
    return rows


def _points(x: object) -> str:
    try:
        return f"{100 * float(x):+.1f}"
    except (TypeError, ValueError):
        return "–"


def _pct(x: object) -> str:
    try:
        return f"{100 * float(x):.1f} %"
    except (TypeError, ValueError):
        return "–"


def markdown(rows: Sequence[Mapping[str, object]]) -> str:
    """The rows as a Markdown table (effects in points)."""
    lines = ["| experiment | settings | split | dataset | pairs (held out) | DPO steps | held-out reward acc. "
             "| warm -> TreeDPO (sampled) | effect, 95 % CI | better / worse | permutation p | same tasks |",
             "|---|---|---|---|---:|---:|---:|---|---|---|---:|---|"]
    for r in rows:
        lines.append(
            f"| `{r['experiment']}` | {r['settings']} | {r['heldout']} | {r['dataset']} | {r['pairs']} "
            f"({r['heldout_pairs'] or 0}) | {r['dpo_steps']} | {r['heldout_reward_accuracy'] or '–'} "
            f"| {_pct(r['warm_mean'])} -> {_pct(r['treedpo_mean'])} "
            f"| {_points(r['effect'])} ({_points(r['effect_ci_low'])} to {_points(r['effect_ci_high'])}) "
            f"| {r['tasks_better']} / {r['tasks_worse']} | {r['permutation_p']} "
            f"| {'yes' if r['same_tasks_as_first'] else 'NO'} |")
    return "\n".join(lines)
