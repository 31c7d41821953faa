"""Score tables of evaluation results (`post_process_test_result.py --see_score`, docs/original.md §0.1, §2.7, §5).

The layout of each env's scores is its spec's (`envs.spec.EnvSpec.score`).
Math (gsm8k, math; `attempts`): acc(t) = mean(score == 1 and turns <= t) for t = 1…max_trial, from one run with
max_turn attempts. t = 1 is plain accuracy; t > 1 is "with correctness feedback" (the agent is told
whether each answer is right and may try again; docs/original.md §10.2). ALFWorld (`task_types`): success per
task type and the unweighted (macro) mean over the types; BabyAI (`success`) and other datasets: success rate.
Tree-sampling files (status `done`) hold coverage (any leaf solved), not accuracy: labelled as such.

Several files become rows of one table, keyed by a label (default: the model part of the
`<method>.<model>/<run>/` directory), so a base and a trained model sit side by side.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from densepolicy.postprocess.config import ScoresConfig
from densepolicy.results_io import iter_csv
from envs.spec import ENV_SPECS, EnvSpec, spec_for_dataset


def _specs(layout: str) -> list[EnvSpec]:
    """The registered envs with score layout `layout` (`EnvSpec.score`), in registry (= table) order."""
    return [spec for spec in ENV_SPECS.values() if spec.score == layout]


def _layout(dataset: str) -> str:
    """The score layout of `dataset`'s env; `success` for datasets of no registered env."""
    spec = spec_for_dataset(dataset)
    return spec.score if spec else "success"


def _typed_score(by_dataset: dict[str, FileScore], spec: EnvSpec) -> FileScore | None:
    """One label's score of an env with task types (ALFWorld): the per-type counts of all its files
    (`alfworld`, `alfworld_put`, ...; a type may come from one file only, otherwise it would be counted twice)."""
    files = [s for d, s in by_dataset.items() if spec.has_dataset(d)]
    if len(files) <= 1:
        return files[0] if files else None
    by_type: dict[str, list[int]] = {}
    owner: dict[str, Path] = {}
    for s in files:
        for task_type, (solved, n) in s.by_type.items():
            if task_type in by_type:
                raise ValueError(f"{spec.title} type {task_type!r} of label {s.label!r} is in two files: "
                                 f"{owner[task_type]} and {s.path}; give distinct --labels")
            by_type[task_type], owner[task_type] = [solved, n], s.path
    return replace(files[0], dataset=spec.name, by_type=by_type, n=sum(s.n for s in files),
                   solved=sum(s.solved for s in files))


FEEDBACK_NOTE = ("@1 = accuracy (one answer). @k (k > 1) = solved within k answer attempts WITH CORRECTNESS "
                 "FEEDBACK: after each wrong answer the agent is told it is wrong and may retry.")


@dataclass
class FileScore:
    """Scores of one result file."""

    path: Path
    label: str
    dataset: str
    n: int = 0
    solved: int = 0
    kind: str = "accuracy"  # or "coverage" for tree-sampling files
    solved_within: list[int] = field(default_factory=list)  # index t-1: solved with turns <= t
    by_type: dict[str, list[int]] = field(default_factory=dict)  # type -> [solved, n]
    duplicate_rows: int = 0
    missing_turns: int = 0
    identity: dict[str, str] = field(default_factory=dict)  # eval_set, model_fingerprint (provenance)

    def acc(self, t: int) -> float:
        return self.solved_within[t - 1] / self.n if self.n else float("nan")

    @property
    def success(self) -> float:
        return self.solved / self.n if self.n else float("nan")


def default_label(path: Path) -> str:
    """`eval_results/codeact_agent.SmolLM2/10.10.None/math.test.None.csv` -> `SmolLM2`."""
    method_model = path.resolve().parent.parent.name
    return method_model.split(".", 1)[1] if "." in method_model else (method_model or path.stem)


def _solved(cell: str) -> bool:
    try:
        return float(cell) >= 1 - 1e-9
    except ValueError:
        return False


def score_file(path: str | os.PathLike, cfg: ScoresConfig | None = None, label: str | None = None) -> FileScore:
    """Stream one result CSV and count solved tasks (per attempt budget and per task type); `cfg`
    defaults to `ScoresConfig()`."""
    cfg = ScoresConfig() if cfg is None else cfg
    path = Path(path)
    result = FileScore(path=path, label=label or default_label(path), dataset="",
                       solved_within=[0] * cfg.max_trial)
    seen: set[str] = set()
    statuses: set[str] = set()
    for _, row in iter_csv(path):
        task = row.get("task_id", "")
        if task in seen:
            result.duplicate_rows += 1
        seen.add(task)
        result.dataset = result.dataset or row.get("dataset", "") or path.name.split(".", 1)[0]
        statuses.add(row.get("status", ""))
        solved = _solved(row.get("score", ""))
        result.n += 1
        result.solved += solved
        if solved:
            try:
                turns = int(float(row.get("turns") or ""))
            except ValueError:
                turns, result.missing_turns = 1, result.missing_turns + 1
            for t in range(max(turns, 1), cfg.max_trial + 1):
                result.solved_within[t - 1] += 1
        task_type = row.get("task_type", "")
        if task_type:
            counts = result.by_type.setdefault(task_type, [0, 0])
            counts[0] += solved
            counts[1] += 1
    if statuses == {"done"}:
        result.kind = "coverage"
    return result


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.2f}"


@dataclass
class ScoreTables:
    """The tables of several files: rows by label, as lists of cells, plus a tidy long form."""

    math_header: list[str]
    math_rows: list[list[str]]
    embodied_header: list[str]
    embodied_rows: list[list[str]]
    other_header: list[str]
    other_rows: list[list[str]]
    tidy: list[dict[str, object]]
    notes: list[str]
    banner: list[str] = field(default_factory=list)  # printed above the tables (e.g. not comparable)
    provenance_header: list[str] = field(default_factory=list)
    provenance_rows: list[list[str]] = field(default_factory=list)  # one row per file (table column)


def _label_rows(scores: Iterable[FileScore]) -> dict[str, dict[str, FileScore]]:
    rows: dict[str, dict[str, FileScore]] = {}
    for s in scores:
        by_dataset = rows.setdefault(s.label, {})
        if s.dataset in by_dataset:
            raise ValueError(f"two files for label {s.label!r} and dataset {s.dataset!r}: "
                             f"{by_dataset[s.dataset].path} and {s.path}; give distinct --labels")
        by_dataset[s.dataset] = s
    return rows


def build_tables(scores: Sequence[FileScore], cfg: ScoresConfig | None = None) -> ScoreTables:
    """Table 1 (math @t), Table 2 (ALFWorld types + macro avg, BabyAI) and other datasets' success
    (`cfg` defaults to `ScoresConfig()`)."""
    cfg = ScoresConfig() if cfg is None else cfg
    rows = _label_rows(scores)
    datasets = list(dict.fromkeys(s.dataset for s in scores))
    math_ds = [spec for spec in _specs("attempts") if spec.name in datasets]
    other_ds = [d for d in datasets if spec_for_dataset(d) is None]
    tidy: list[dict[str, object]] = []
    notes: list[str] = []

    def add(s: FileScore, metric: str, solved: int, n: int) -> None:
        tidy.append({"label": s.label, "dataset": s.dataset, "metric": metric,
                     "value": round(100 * solved / n, 2) if n else "", "solved": solved, "n": n,
                     "kind": s.kind, "file": str(s.path), **s.identity})

    for s in scores:
        layout = _layout(s.dataset)
        notes.append(f"{s.label} / {s.dataset}: n={s.n} ({s.kind}) from {s.path}")
        if s.kind == "coverage":
            notes.append(f"  WARNING: {s.path.name} is a tree-sampling file: score = coverage "
                         "(any leaf solved), not accuracy")
        if s.duplicate_rows:
            notes.append(f"  WARNING: {s.duplicate_rows} duplicate task row(s); run --merge_distributed_result")
        if s.missing_turns and layout == "attempts":
            notes.append(f"  WARNING: {s.missing_turns} solved row(s) without `turns` counted as solved at @1")
        if layout == "attempts":
            for t in range(1, cfg.max_trial + 1):
                add(s, f"acc@{t}", s.solved_within[t - 1], s.n)
        elif layout == "task_types":
            for task_type in cfg.task_types(spec_for_dataset(s.dataset)):
                solved, n = s.by_type.get(task_type, [0, 0])
                add(s, f"success_{task_type}", solved, n)
            add(s, "success", s.solved, s.n)
        else:
            add(s, "success", s.solved, s.n)

    math_header = ["model"] + [f"{spec.title}@{t}" + ("" if t == 1 else "*")
                               for spec in math_ds for t in cfg.table_trials]
    math_rows = []
    for label, by_ds in rows.items():
        if any(spec.name in by_ds for spec in math_ds):
            math_rows.append([label] + [_pct(by_ds[spec.name].acc(t)) if spec.name in by_ds else "–"
                                        for spec in math_ds for t in cfg.table_trials])

    typed_specs, success_specs = _specs("task_types"), _specs("success")
    embodied_header = (["model"] + [c for spec in typed_specs for c in [*cfg.task_types(spec), "avg"]]
                       + [spec.title for spec in success_specs])
    embodied_rows = []
    for label, by_ds in rows.items():
        typed = [(spec, _typed_score(by_ds, spec)) for spec in typed_specs]
        if all(score is None for _, score in typed) and not any(spec.name in by_ds for spec in success_specs):
            continue
        cells = [label]
        for spec, typed_score in typed:
            types = cfg.task_types(spec)
            rates = []
            for task_type in types:
                solved, n = typed_score.by_type.get(task_type, [0, 0]) if typed_score else [0, 0]
                cells.append(_pct(solved / n) if n else "–")
                if n:
                    rates.append(solved / n)
            macro = sum(rates) / len(rates) if rates else None
            if typed_score and rates and len(rates) < len(types):
                notes.append(f"  NOTE: {label} {spec.title} avg is over {len(rates)} of {len(types)} types")
            if typed_score and macro is not None:
                tidy.append({"label": label, "dataset": spec.name, "metric": "success_avg_macro",
                             "value": round(100 * macro, 2), "solved": "", "n": len(rates),
                             "kind": typed_score.kind, "file": str(typed_score.path), **typed_score.identity})
            cells.append(_pct(macro))
        cells += [_pct(by_ds[spec.name].success) if spec.name in by_ds else "–" for spec in success_specs]
        embodied_rows.append(cells)

    other_header = ["model"] + [f"{d} success" for d in other_ds]
    other_rows = [[label] + [_pct(by_ds[d].success) if d in by_ds else "–" for d in other_ds]
                  for label, by_ds in rows.items() if any(d in by_ds for d in other_ds)]
    return ScoreTables(math_header, math_rows, embodied_header, embodied_rows, other_header, other_rows,
                       tidy, notes)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _sections(tables: ScoreTables) -> list[tuple[str, list[str], list[list[str]]]]:
    sections = []
    if tables.math_rows:
        sections.append(("Math: accuracy (%) by answer attempts", tables.math_header, tables.math_rows))
    if tables.embodied_rows:
        title = (f"Embodied: success (%) per {' / '.join(spec.title for spec in _specs('task_types'))} task type, "
                 f"macro avg, {', '.join(spec.title for spec in _specs('success'))}")
        sections.append((title, tables.embodied_header, tables.embodied_rows))
    if tables.other_rows:
        sections.append(("Other datasets: success (%)", tables.other_header, tables.other_rows))
    if tables.provenance_rows:
        sections.append(("Provenance per result (eval set = sha256 of the sorted task ids)",
                         tables.provenance_header, tables.provenance_rows))
    return sections


def render_text(tables: ScoreTables) -> str:
    """Plain-text tables for the terminal."""
    parts = list(tables.banner)
    for title, header, rows in _sections(tables):
        parts.append(f"{title}\n{_text_table(header, rows)}")
    if tables.math_rows:
        parts.append("* " + FEEDBACK_NOTE)
    parts.append("\n".join(tables.notes))
    return "\n\n".join(parts)


def render_markdown(tables: ScoreTables) -> str:
    """Markdown version of `render_text`."""
    parts = [f"**{line}**" for line in tables.banner]
    for title, header, rows in _sections(tables):
        parts.append(f"### {title}\n\n{_md_table(header, rows)}")
    if tables.math_rows:
        parts.append("\\* " + FEEDBACK_NOTE)
    parts.append("\n".join(f"- {n.strip()}" for n in tables.notes))
    return "\n\n".join(parts) + "\n"


TIDY_COLUMNS = ["label", "dataset", "metric", "value", "solved", "n", "kind", "file", "eval_set_sha256",
                "model_fingerprint", "comparable"]


def render_csv(tables: ScoreTables) -> str:
    """The tidy long form (one metric per row) as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TIDY_COLUMNS, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(tables.tidy)
    return buffer.getvalue()
