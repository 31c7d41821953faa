"""Pairs CSV -> LLaMA-Factory pairwise dataset (ShareGPT, docs/formats.md; docs/original.md §7).

    report = prepare_dataset(pairs_csv, name="tree_dpo_math", cfg=DatasetConfig())

Each selected pair becomes
    {"conversations": [human, gpt, human, …, human], "chosen": {"from": "gpt", …}, "rejected": {…}}
(plus "system" if the prompt starts with a system message). Pairs whose prompt + chosen or
prompt + rejected, rendered with the model's own chat template, is longer than `cutoff_len` tokens are
dropped and counted. Every message content is written as the model's own chat template (the one vLLM renders)
renders it: Meta-Llama-3-Instruct's trims each content, LLaMA-Factory's `llama3` template does not, so an
observation "42\n" is written "42" (`densepolicy.serving.chat_template`); a pair whose two answers are then the
same is dropped and counted. The JSON goes to `<output_dir>/<name>.json` (never overwritten without
`overwrite`) and `<output_dir>/dataset_info.json` gets the entry `name` (other entries kept; atomic).
`name` is a plain file name (no path separator, no `..`). Both files are written under the lock
`<output_dir>/dataset_info.json.lock` (densepolicy.file_lock), taken before the "already exists" check,
so of two runs started together the second is refused (`LockHeldError`) instead of replacing the first.
Other local pairwise datasets can be mixed in by ratio (relative to the number of our pairs).
A dataset without pairs (an empty, header-only or all-unselected pairs file, or every pair longer than
the cutoff) is refused before anything is written, unless `allow_empty`: it would only fail later,
in training.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from densepolicy.file_lock import OutputLock, lock_path, terminate_on_signals
from densepolicy.postprocess.pairs import read_pairs
from densepolicy.config import to_dict
from densepolicy.paths import resolve
from densepolicy.postprocess.config import DatasetConfig
from densepolicy.results_io import ensure_new, write_json_atomic
from densepolicy.serving.chat_template import content_rules, describe_rules, served_sharegpt
from densepolicy.postprocess.output_records import record_dataset

ROLE_TO_SHAREGPT = {"user": "human", "assistant": "gpt"}
SHAREGPT_TO_ROLE = {"human": "user", "gpt": "assistant"}


class DatasetError(ValueError):
    """A pair or an input dataset cannot be converted; the message names it."""


def dataset_info_entry(name: str, has_system: bool) -> dict[str, Any]:
    """The `dataset_info.json` entry of a ShareGPT pairwise file `<name>.json`."""
    columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
    if has_system:
        columns["system"] = "system"
    return {"file_name": f"{name}.json", "formatting": "sharegpt", "ranking": True, "columns": columns}


def pair_to_sharegpt(prompt: Sequence[dict[str, str]], chosen: str, rejected: str) -> dict[str, Any]:
    """One ShareGPT pairwise record; the prompt must alternate user/assistant and end with a user turn."""
    record: dict[str, Any] = {}
    messages = list(prompt)
    if messages and messages[0].get("role") == "system":
        record["system"] = messages.pop(0)["content"]
    conversations = []
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise DatasetError(f"prompt message {i} has role {message.get('role')!r}, expected {expected!r}")
        conversations.append({"from": ROLE_TO_SHAREGPT[expected], "value": message["content"]})
    if not conversations or conversations[-1]["from"] != "human":
        raise DatasetError("prompt must end with a user message")
    record["conversations"] = conversations
    record["chosen"] = {"from": "gpt", "value": chosen}
    record["rejected"] = {"from": "gpt", "value": rejected}
    return record


def record_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages of a record's prompt (system first if present)."""
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    messages += [{"role": SHAREGPT_TO_ROLE[m["from"]], "content": m["value"]} for m in record["conversations"]]
    return messages


def alpaca_to_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """An alpaca pairwise record (instruction/input/history/chosen/rejected) as ShareGPT."""
    prompt = []
    if record.get("system"):
        prompt.append({"role": "system", "content": record["system"]})
    for user, assistant in record.get("history") or []:
        prompt += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    query = record["instruction"] + (("\n" + record["input"]) if record.get("input") else "")
    prompt.append({"role": "user", "content": query})
    return pair_to_sharegpt(prompt, record["chosen"], record["rejected"])


def read_pairwise_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Load a local pairwise dataset (ShareGPT like ours, or alpaca pairwise) as ShareGPT records."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or bytes that are not UTF-8
        raise DatasetError(f"cannot read pairwise dataset {path}: {exc}") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records")
    out = []
    for i, record in enumerate(data):
        if "conversations" in record and "chosen" in record and "rejected" in record:
            out.append(record)
        elif "instruction" in record and "chosen" in record and "rejected" in record:
            out.append(alpaca_to_sharegpt(record))
        else:
            raise DatasetError(f"{path}: record {i} is neither ShareGPT nor alpaca pairwise")
    return out


def resolve_mix_source(spec: str, output_dir: Path) -> Path:
    """A mix source: a JSON path, or a name registered in `<output_dir>/dataset_info.json`."""
    if Path(spec).is_file():
        return Path(spec)
    info_path = output_dir / "dataset_info.json"
    entry = read_dataset_info(info_path).get(spec)
    if entry and (output_dir / entry.get("file_name", "")).is_file():
        return output_dir / entry["file_name"]
    raise DatasetError(f"--mix source {spec!r} is neither a file nor a local dataset in {info_path}")


def mix_records(ours: list[dict], others: Iterable[tuple[str, list[dict], float]],
                seed: int) -> tuple[list[dict], dict[str, int]]:
    """Add round(ratio * len(ours)) records of each other dataset (upsampled with replacement if
    it is smaller), then shuffle everything with `seed` (our order is kept when nothing is mixed).
    Returns (records, count per source)."""
    rng = random.Random(seed)
    combined = list(ours)
    counts: dict[str, int] = {}
    for name, records, ratio in others:
        k = round(ratio * len(ours))
        if not records or k <= 0:
            counts[name] = 0
            continue
        picked = rng.sample(records, k) if k <= len(records) else [rng.choice(records) for _ in range(k)]
        combined += picked
        counts[name] = k
    if len(combined) > len(ours):
        rng.shuffle(combined)
    return combined, counts


def load_tokenizer(model: str = ""):
    """The tokenizer of `model`: a name of configs/models.yaml or a model directory ('' = the registry's
    default, the embedded SmolLM2). Models are never downloaded; a missing one is a `ModelError`."""
    from transformers import AutoTokenizer

    from densepolicy.serving.models import resolve_model

    spec = resolve_model(model or None)
    tokenizer = AutoTokenizer.from_pretrained(str(spec.path))
    if tokenizer.chat_template is None:
        raise DatasetError(f"model {spec.path} has no chat template")
    return tokenizer


def pair_token_lengths(tokenizer, records: Sequence[dict[str, Any]], batch_size: int = 64,
                       show_progress: bool = True) -> list[tuple[int, int]]:
    """(tokens of prompt + chosen, tokens of prompt + rejected) with the model's own chat template."""
    lengths: list[tuple[int, int]] = []
    for start in tqdm(range(0, len(records), batch_size), desc="measuring tokens", unit="batch",
                      disable=not show_progress or len(records) <= batch_size):
        texts = []
        for record in records[start:start + batch_size]:
            prompt = record_messages(record)
            for side in ("chosen", "rejected"):
                texts.append(tokenizer.apply_chat_template(
                    prompt + [{"role": "assistant", "content": record[side]["value"]}], tokenize=False))
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths += [(len(ids[i]), len(ids[i + 1])) for i in range(0, len(ids), 2)]
    return lengths


def served_pairs(records: Sequence[dict[str, Any]], rules) -> tuple[list[dict[str, Any]], int]:
    """(records with every content as the served chat template renders it (`rules` of `content_rules`),
    how many pairs were dropped because their two answers are then the same text)."""
    if not any(rule.changes_contents for rule in dict(rules).values()):
        return list(records), 0
    out = [served_sharegpt(record, rules) for record in records]
    kept = [record for record in out if record["chosen"]["value"] != record["rejected"]["value"]]
    return kept, len(out) - len(kept)


def register_dataset(info_path: str | os.PathLike, name: str, entry: dict[str, Any]) -> None:
    """Insert or update `name` in dataset_info.json, keeping every other entry (atomic write)."""
    info = read_dataset_info(info_path)
    info[name] = entry
    write_json_atomic(info_path, info)


def read_dataset_info(info_path: str | os.PathLike) -> dict[str, Any]:
    """The entries of a `dataset_info.json` ({} if there is none); unreadable is a `DatasetError` naming it."""
    info_path = Path(info_path)
    if not info_path.is_file():
        return {}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8") or "{}")
    except ValueError as exc:  # invalid JSON or bytes that are not UTF-8
        raise DatasetError(f"{info_path} is not valid JSON ({exc}); fix it before registering datasets") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{info_path} is not a JSON object; fix it before registering datasets")
    return info


@dataclass
class DatasetReport:
    output: Path
    name: str
    rows: int = 0
    unselected: int = 0
    dropped_long: int = 0
    longest_dropped: int = 0
    written_pairs: int = 0
    mixed: dict[str, int] = field(default_factory=dict)
    max_tokens_kept: int = 0
    served_contents: str = ""
    """What the model's chat template does to contents, as written ('' when it keeps them)."""
    same_answers: int = 0
    """Pairs dropped because chosen and rejected are the same text as the served template renders them."""

    def text(self) -> str:
        lines = [f"read {self.rows} pair rows ({self.unselected} not selected, skipped)",
                 *([f"contents written as the model's chat template renders them ({self.served_contents}); "
                    f"dropped {self.same_answers} pair(s) whose answers are then the same"]
                   if self.served_contents else []),
                 f"dropped {self.dropped_long} pair(s) longer than the cutoff"
                 + (f" (longest {self.longest_dropped} tokens)" if self.dropped_long else ""),
                 f"wrote {self.written_pairs} tree pairs (longest kept {self.max_tokens_kept} tokens)"
                 + "".join(f" + {n} from {src}" for src, n in self.mixed.items())
                 + f" to {self.output}",
                 f"registered {self.name!r} in {self.output.parent / 'dataset_info.json'}"]
        return "\n".join(lines)


def default_name(pairs_path: Path) -> str:
    """`merged_all_pairs.math-22331-2334.csv` -> `tree_dpo_math-22331-2334`."""
    stem = pairs_path.name[: -len(".csv")] if pairs_path.name.endswith(".csv") else pairs_path.name
    for prefix in ("merged_all_pairs.", "merged_all_pairs"):
        if stem.startswith(prefix):
            stem = stem[len(prefix):]
            break
    stem = stem[: -len(".pairs")] if stem.endswith(".pairs") else stem
    return "tree_dpo_" + (stem or "pairs").replace(".", "_")


def check_dataset_name(name: str) -> str:
    """Return `name` if it is a plain dataset file name; a `DatasetError` if it holds a path separator,
    `..`, a control character, or is empty (it becomes `<output_dir>/<name>.json`)."""
    seps = {"/", "\\"} | {sep for sep in (os.sep, os.altsep) if sep}
    if not name or name.strip() != name or any(sep in name for sep in seps) or ".." in name \
            or name.startswith(".") or any(ord(ch) < 32 for ch in name):
        raise DatasetError(f"--name {name!r} must be a plain file name: no '/' or '\\', no '..', no leading '.', "
                           f"no control characters or surrounding spaces (the dataset goes to "
                           f"<output_dir>/<name>.json)")
    return name


def prepare_dataset(pairs_path: str | os.PathLike, cfg: DatasetConfig, name: str | None = None,
                    mix: Sequence[tuple[str, float]] = (), overwrite: bool = False,
                    tokenizer=None, show_progress: bool = True, allow_empty: bool = False) -> DatasetReport:
    """Convert a pairs CSV into a registered LLaMA-Factory dataset; see the module docstring."""
    pairs_path = Path(pairs_path)
    name = check_dataset_name(name or default_name(pairs_path))
    output_dir = resolve(cfg.output_dir)
    with terminate_on_signals(), OutputLock(lock_path(output_dir / "dataset_info.json"), "prepare_dataset.py"):
        return _prepare_locked(pairs_path, cfg, name, output_dir, mix, overwrite, tokenizer, show_progress,
                               allow_empty)


def _prepare_locked(pairs_path: Path, cfg: DatasetConfig, name: str, output_dir: Path,
                    mix: Sequence[tuple[str, float]], overwrite: bool, tokenizer, show_progress: bool,
                    allow_empty: bool) -> DatasetReport:
    """`prepare_dataset` with the lock of `<output_dir>/dataset_info.json` held."""
    report = DatasetReport(output=ensure_new(output_dir / f"{name}.json", overwrite), name=name)
    read_dataset_info(output_dir / "dataset_info.json")  # a broken registry stops us before anything is written
    records = []
    for line, row in read_pairs(pairs_path):
        report.rows += 1
        if not row["selected"]:
            report.unselected += 1
            continue
        try:
            records.append(pair_to_sharegpt(row["prompt"], row["chosen"], row["rejected"]))
        except DatasetError as exc:
            raise DatasetError(f"{pairs_path}:{line}: {exc}") from None
    if not records and not allow_empty:
        raise DatasetError(f"{pairs_path}: no selected pairs ({report.rows} rows, {report.unselected} not "
                           f"selected): nothing to train on; pass --allow_empty to write an empty dataset anyway")
    if records:
        tokenizer = tokenizer or load_tokenizer(cfg.model)
    rules = content_rules(tokenizer) if records else {}
    report.served_contents = describe_rules(rules)
    records, report.same_answers = served_pairs(records, rules)
    if report.same_answers and not records and not allow_empty:
        raise DatasetError(f"{pairs_path}: the two answers of all {report.same_answers} selected pairs are the same "
                           f"text as the model's chat template renders them ({report.served_contents}): nothing "
                           f"to train on; pass --allow_empty to write an empty dataset anyway")
    kept = []
    for record, (n_chosen, n_rejected) in zip(records, pair_token_lengths(tokenizer, records,
                                                                          show_progress=show_progress)):
        longest = max(n_chosen, n_rejected)
        if longest > cfg.cutoff_len:
            report.dropped_long += 1
            report.longest_dropped = max(report.longest_dropped, longest)
        else:
            kept.append(record)
            report.max_tokens_kept = max(report.max_tokens_kept, longest)
    report.written_pairs = len(kept)
    if records and not kept and not allow_empty:
        raise DatasetError(f"{pairs_path}: all {len(records)} selected pairs are longer than cutoff_len="
                           f"{cfg.cutoff_len} tokens: nothing to train on; raise dataset.cutoff_len, or pass "
                           f"--allow_empty")
    others = [(spec, served_pairs(read_pairwise_json(resolve_mix_source(spec, output_dir)), rules)[0], ratio)
              for spec, ratio in mix]
    combined, report.mixed = mix_records(kept, others, cfg.seed)
    write_json_atomic(report.output, combined, indent=1)
    has_system = any("system" in r for r in combined)
    register_dataset(output_dir / "dataset_info.json", name, dataset_info_entry(name, has_system))
    record_dataset(report.output, [pairs_path] + [resolve_mix_source(spec, output_dir) for spec, _ in mix],
                   {**to_dict(cfg), "name": name, "mix": [list(m) for m in mix]}, tokenizer_model=cfg.model)
    return report
