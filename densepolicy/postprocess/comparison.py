"""Paired comparison of several models evaluated on the same tasks: table, tests, plot (`make experiment`).

Input: per dataset, one merged evaluation CSV (`codeact_agent`, docs/formats.md) per model. Per task we
keep whether it was solved (math: accuracy @1 = correct with the first answer; embodied: success) and
how many of the model's own steps parsed as a valid `Action:` or `Answer:` (protocol following). Per
dataset and model: success rate with a 95 % Wilson interval and the protocol rate; between two models:
the exact McNemar test on the tasks only one of them solved. Every model must have been run on exactly
the same task ids, otherwise the comparison is refused.

With several sampled episodes per task (`samples`: one merged CSV per sample, the same seeds for every
model), each model also gets its mean per-task success rate with a 95 % interval clustered by task, and
each test pair a paired comparison of per-task rates (effect and its interval, sign-flip permutation and
Wilcoxon p-values, minimum detectable effect at 80 % power): `significance.compare_rates`.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agents.parser import parse_generation
from densepolicy.results_io import atomic_open, iter_csv
from densepolicy.postprocess.significance import (ClusteredMean, PairedComparison, RateComparison, clustered_mean,
                                                  compare_rates, paired_comparison, wilson_interval)
from envs.spec import spec_for_dataset


@dataclass(frozen=True)
class TaskOutcome:
    """One model on one task: solved or not, its steps and how many of them parsed as Action/Answer."""

    solved: bool
    steps: int
    valid_steps: int


def _answer_attempts(dataset: str) -> bool:
    """`dataset`'s env scores answer attempts (math: solved = correct with the first answer)."""
    spec = spec_for_dataset(dataset)
    return spec is not None and spec.score == "attempts"


def metric_name(dataset: str) -> str:
    """`accuracy@1` for envs scored by answer attempts, `success` for the others."""
    return "accuracy@1" if _answer_attempts(dataset) else "success"


def _number(cell: str | None, default: float = 0.0) -> float:
    try:
        return float(cell) if cell not in (None, "") else default
    except ValueError:
        return default


def load_outcomes(path: str | Path) -> dict[str, TaskOutcome]:
    """Per-task outcomes of one merged evaluation CSV (task id -> TaskOutcome).

    The model's own assistant messages are the last `steps` ones of `history` (in-context examples
    come before them); each counts as valid when `agents.parser` reads it as an action or an answer.
    Duplicate task rows (an unmerged run) are an error.
    """
    outcomes: dict[str, TaskOutcome] = {}
    for line, row in iter_csv(path):
        task = row.get("task_id", "")
        if task in outcomes:
            raise ValueError(f"{path}:{line}: duplicate task {task!r} (merge the shards first)")
        dataset = row.get("dataset", "")
        solved = _number(row.get("score")) >= 1 - 1e-9
        if solved and _answer_attempts(dataset):
            solved = _number(row.get("turns"), 1) <= 1
        steps = int(_number(row.get("steps")))
        history = row.get("history") or []
        if isinstance(history, str):
            history = json.loads(history)
        own = [m for m in history[len(history) - 2 * steps:] if m.get("role") == "assistant"] if steps else []
        valid = sum(1 for m in own if parse_generation(m.get("content", "")).kind != "invalid")
        outcomes[task] = TaskOutcome(solved=solved, steps=len(own), valid_steps=valid)
    return outcomes


@dataclass
class ModelScore:
    """One model on one dataset."""

    model: str
    n: int
    solved: int
    ci: tuple[float, float]
    steps: int
    valid_steps: int

    @property
    def rate(self) -> float:
        return self.solved / self.n if self.n else float("nan")

    @property
    def protocol_rate(self) -> float:
        return self.valid_steps / self.steps if self.steps else float("nan")


@dataclass
class SampledScore:
    """One model on one dataset over `samples` sampled episodes per task."""

    model: str
    samples: int
    mean: ClusteredMean
    steps: int
    valid_steps: int

    @property
    def protocol_rate(self) -> float:
        return self.valid_steps / self.steps if self.steps else float("nan")


@dataclass
class EnvComparison:
    """All models on one dataset, over the same task ids, with the requested paired tests."""

    dataset: str
    task_ids: list[str]
    scores: list[ModelScore]
    tests: list[tuple[str, str, PairedComparison]] = field(default_factory=list)
    outcomes: dict[str, dict[str, TaskOutcome]] = field(default_factory=dict)
    sampled: list[SampledScore] = field(default_factory=list)
    rate_tests: list[tuple[str, str, RateComparison]] = field(default_factory=list)
    samples: dict[str, list[dict[str, TaskOutcome]]] = field(default_factory=dict)
    temperature: float | None = None

    def task_rates(self, model: str) -> dict[str, float]:
        """Per-task success rate of `model` over its sampled episodes."""
        runs = self.samples[model]
        return {t: sum(run[t].solved for run in runs) / len(runs) for t in self.task_ids}


def compare(dataset: str, outcomes: Mapping[str, Mapping[str, TaskOutcome]],
            tests: Sequence[tuple[str, str]] = (),
            samples: Mapping[str, Sequence[Mapping[str, TaskOutcome]]] | None = None,
            temperature: float | None = None) -> EnvComparison:
    """Score every model (in the given order) and run `tests` = [(model A, model B), ...] (exact McNemar).

    `samples` (optional): per model, one outcome map per sampled episode (sample k of every model used the
    same seeds, at `temperature`); they add the per-task-rate scores and tests. Raises ValueError when the
    models (or any sample) were not run on the same task ids, when models have different numbers of
    samples, or a test names a model that is not there.
    """
    models = list(outcomes)
    if not models:
        raise ValueError(f"{dataset}: no model results to compare")
    reference = set(outcomes[models[0]])
    for model in models[1:]:
        ids = set(outcomes[model])
        if ids != reference:
            missing, extra = sorted(reference - ids), sorted(ids - reference)
            raise ValueError(f"{dataset}: {model!r} was not run on the same task ids as {models[0]!r}: "
                             f"{len(missing)} missing ({missing[:5]}), {len(extra)} extra ({extra[:5]})")
    scores = []
    for model in models:
        rows = outcomes[model].values()
        solved = sum(o.solved for o in rows)
        scores.append(ModelScore(model=model, n=len(rows), solved=solved, ci=wilson_interval(solved, len(rows)),
                                 steps=sum(o.steps for o in rows), valid_steps=sum(o.valid_steps for o in rows)))
    done = []
    for a, b in tests:
        if a not in outcomes or b not in outcomes:
            raise ValueError(f"{dataset}: paired test {a} vs {b} names a model without results ({models})")
        solved_a = {t: o.solved for t, o in outcomes[a].items()}
        solved_b = {t: o.solved for t, o in outcomes[b].items()}
        done.append((a, b, paired_comparison(solved_a, solved_b)))
    result = EnvComparison(dataset=dataset, task_ids=sorted(reference, key=_task_sort_key), scores=scores,
                           tests=done, outcomes={m: dict(outcomes[m]) for m in models}, temperature=temperature)
    if samples:
        _add_samples(result, samples, tests)
    return result


def _add_samples(result: EnvComparison, samples: Mapping[str, Sequence[Mapping[str, TaskOutcome]]],
                 tests: Sequence[tuple[str, str]]) -> None:
    reference = set(result.task_ids)
    counts = {m: len(runs) for m, runs in samples.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise ValueError(f"{result.dataset}: every model needs the same number of sampled episodes, got {counts}")
    for model, runs in samples.items():
        for k, run in enumerate(runs):
            if set(run) != reference:
                missing, extra = sorted(reference - set(run)), sorted(set(run) - reference)
                raise ValueError(f"{result.dataset}: sample {k} of {model!r} was not run on the held-out task ids: "
                                 f"{len(missing)} missing ({missing[:5]}), {len(extra)} extra ({extra[:5]})")
        result.samples[model] = [dict(run) for run in runs]
    n = next(iter(counts.values()))
    for model in samples:
        rates = result.task_rates(model)
        runs = result.samples[model]
        result.sampled.append(SampledScore(
            model=model, samples=n, mean=clustered_mean([rates[t] for t in result.task_ids], samples=n * len(rates)),
            steps=sum(o.steps for run in runs for o in run.values()),
            valid_steps=sum(o.valid_steps for run in runs for o in run.values())))
    for a, b in tests:
        if a in samples and b in samples:
            result.rate_tests.append((a, b, compare_rates(result.task_rates(a), result.task_rates(b), n)))


def _task_sort_key(task: str) -> tuple:
    return (0, int(task), "") if task.isdigit() else (1, 0, task)


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 0.001 else f"{p:.1e}"


def markdown_tables(comparisons: Sequence[EnvComparison]) -> str:
    """One Markdown table per dataset (models as rows) followed by its paired tests."""
    out = []
    for c in comparisons:
        metric = metric_name(c.dataset)
        out.append(f"### {c.dataset} ({len(c.task_ids)} held-out tasks, {metric})\n")
        out.append(f"| model | tasks | solved | {metric} (%) | 95 % CI (Wilson) | protocol (%) | steps |")
        out.append("|---|---:|---:|---:|---|---:|---:|")
        for s in c.scores:
            ci = "–" if s.n == 0 else f"{_pct(s.ci[0])} – {_pct(s.ci[1])}"
            out.append(f"| {s.model} | {s.n} | {s.solved} | {_pct(s.rate)} | {ci} | {_pct(s.protocol_rate)} "
                       f"| {s.steps} |")
        if c.tests:
            out.append("")
            out.append("| paired test (exact McNemar) | tasks | solved only by the first | only by the second | p |")
            out.append("|---|---:|---:|---:|---:|")
            for a, b, t in c.tests:
                out.append(f"| {a} vs {b} | {t.n} | {t.a_only} | {t.b_only} | {_p(t.p_value)} |")
        if c.sampled:
            n = c.sampled[0].samples
            temp = "" if c.temperature is None else f" at temperature {c.temperature:g}"
            out.append("")
            out.append(f"Sampled: {n} episodes per task{temp}, the same seeds for every model; the task is the unit "
                       f"(95 % CI clustered by task).")
            out.append("")
            out.append(f"| model | tasks | episodes | mean {metric} (%) | 95 % CI (clustered) | protocol (%) |")
            out.append("|---|---:|---:|---:|---|---:|")
            for s in c.sampled:
                m = s.mean
                ci = "–" if m.ci[0] != m.ci[0] else f"{_pct(m.ci[0])} – {_pct(m.ci[1])}"
                out.append(f"| {s.model} | {m.tasks} | {m.samples} | {_pct(m.mean)} | {ci} | {_pct(s.protocol_rate)} |")
        if c.rate_tests:
            out.append("")
            out.append("| paired test on per-task rates | tasks | effect (points) | 95 % CI | tasks better: first / "
                       "second | permutation p | Wilcoxon p | MDE at 80 % power (points) |")
            out.append("|---|---:|---:|---|---|---:|---:|---:|")
            for a, b, r in c.rate_tests:
                ci = "–" if r.effect_ci[0] != r.effect_ci[0] else f"{_signed(r.effect_ci[0])} – {_signed(r.effect_ci[1])}"
                out.append(f"| {a} vs {b} | {r.tasks} | {_signed(r.effect)} | {ci} | {r.a_better} / {r.b_better} "
                           f"| {_p(r.permutation_p)} | {_p(r.wilcoxon_p)} | {_pct(r.mde)} (design {_pct(r.mde_design)}) |")
        out.append("")
    return "\n".join(out)


def _signed(x: float) -> str:
    return "–" if x != x else f"{100 * x:+.1f}"


def results_rows(comparisons: Sequence[EnvComparison]) -> list[dict[str, object]]:
    """results.csv rows: one per (dataset, model)."""
    rows = []
    for c in comparisons:
        for s in c.scores:
            rows.append({"dataset": c.dataset, "model": s.model, "metric": metric_name(c.dataset), "tasks": s.n,
                         "solved": s.solved, "rate": _round(s.rate), "ci_low": _round(s.ci[0]),
                         "ci_high": _round(s.ci[1]), "steps": s.steps, "valid_steps": s.valid_steps,
                         "protocol_rate": _round(s.protocol_rate)})
    return rows


def paired_rows(comparisons: Sequence[EnvComparison]) -> list[dict[str, object]]:
    """paired_tests.csv rows: one per (dataset, model A, model B)."""
    return [{"dataset": c.dataset, "model_a": a, "model_b": b, "tasks": t.n, "a_only": t.a_only,
             "b_only": t.b_only, "p_value": _round(t.p_value, 6), "test": "exact McNemar (two-sided)"}
            for c in comparisons for a, b, t in c.tests]


def sampled_rows(comparisons: Sequence[EnvComparison]) -> list[dict[str, object]]:
    """sampled_results.csv rows: one per (dataset, model) over the sampled episodes."""
    return [{"dataset": c.dataset, "model": s.model, "metric": metric_name(c.dataset), "tasks": s.mean.tasks,
             "samples_per_task": s.samples, "temperature": c.temperature, "episodes": s.mean.samples,
             "mean": _round(s.mean.mean), "se_clustered": _round(s.mean.se), "ci_low": _round(s.mean.ci[0]),
             "ci_high": _round(s.mean.ci[1]), "protocol_rate": _round(s.protocol_rate)}
            for c in comparisons for s in c.sampled]


def rate_test_rows(comparisons: Sequence[EnvComparison]) -> list[dict[str, object]]:
    """paired_rate_tests.csv rows: one per (dataset, model A, model B) over per-task rates."""
    return [{"dataset": c.dataset, "model_a": a, "model_b": b, "tasks": r.tasks, "samples_per_task": r.samples,
             "mean_a": _round(r.mean_a), "mean_b": _round(r.mean_b), "effect": _round(r.effect),
             "effect_ci_low": _round(r.effect_ci[0]), "effect_ci_high": _round(r.effect_ci[1]),
             "tasks_a_better": r.a_better, "tasks_b_better": r.b_better,
             "permutation_p": _round(r.permutation_p, 6), "wilcoxon_p": _round(r.wilcoxon_p, 6),
             "mde_80": _round(r.mde), "mde_80_design": _round(r.mde_design)}
            for c in comparisons for a, b, r in c.rate_tests]


def sampled_task_rows(comparisons: Sequence[EnvComparison]) -> list[dict[str, object]]:
    """per_task_sampled.csv rows: one per (dataset, task, model, sample), for re-analysis."""
    return [{"dataset": c.dataset, "task_id": t, "model": m, "sample": k, "solved": int(run[t].solved),
             "steps": run[t].steps, "valid_steps": run[t].valid_steps}
            for c in comparisons for t in c.task_ids for m, runs in c.samples.items() for k, run in enumerate(runs)]


def task_rows(comparisons: Sequence[EnvComparison]) -> list[dict[str, object]]:
    """per_task.csv rows: one per (dataset, task, model), for re-analysis."""
    return [{"dataset": c.dataset, "task_id": t, "model": m, "solved": int(c.outcomes[m][t].solved),
             "steps": c.outcomes[m][t].steps, "valid_steps": c.outcomes[m][t].valid_steps}
            for c in comparisons for t in c.task_ids for m in c.outcomes]


def _round(x: float, digits: int = 4) -> object:
    return "" if x != x else round(x, digits)


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    """Write dict rows (header from the first row) atomically; an empty list writes an empty file."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        if rows:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def plot(comparisons: Sequence[EnvComparison], path: Path, title: str = "") -> Path:
    """Grouped bars (one group per dataset, one bar per model) with 95 % error bars: the mean over sampled
    episodes with its task-clustered interval where there are samples, else the greedy rate (Wilson)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(s.model for c in comparisons for s in c.scores))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(comparisons), 4))
    for j, model in enumerate(models):
        xs, ys, lo, hi = [], [], [], []
        for i, c in enumerate(comparisons):
            sampled = next((s.mean for s in c.sampled if s.model == model and s.mean.tasks > 1), None)
            s = next((s for s in c.scores if s.model == model and s.n), None)
            if sampled is not None:     # several episodes per task: their mean, task-clustered interval
                rate, ci = sampled.mean, sampled.ci
            elif s is not None:
                rate, ci = s.rate, s.ci
            else:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(100 * rate)
            lo.append(100 * (rate - ci[0]))
            hi.append(100 * (ci[1] - rate))
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=model)
    ax.set_xticks(range(len(comparisons)))
    ax.set_xticklabels([f"{c.dataset}\n(n={len(c.task_ids)})" for c in comparisons])
    ax.set_ylabel("success / accuracy@1 (%)")
    ax.set_ylim(0, 100)
    any_sampled = any(c.sampled for c in comparisons)
    ax.set_title(title or ("held-out tasks: mean over sampled episodes, 95 % CI clustered by task" if any_sampled
                           else "held-out tasks, 95 % Wilson intervals"))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

