"""Provenance: which code, packages, data files, task ids, model and settings produced a result.

Every stage writes a `provenance.json` (schema in docs/formats.md) next to what it produced:

    record_sampling_shard(out_dir, cfg, env, task_ids, shard, num_shards, model)  # each worker (sampling/run_record.py)
    merged_columns(run_dir, "gsm8k.test.None.csv", task_ids)   # the merge: columns for every merged row
    record_pairs(pairs_csv, inputs, settings)                   # --process_result / --merge_all_pairs
    record_dataset(dataset_json, pairs_csv, settings, sources)  # prepare_dataset -> <name>.provenance.json
    record_trained_model(model_dir, train_args, config)         # TreeDPO training

A `provenance.json` maps output file names to records (`{"schema": 1, "records": {name: record}}`), so
one run directory can hold several datasets. The workers of one sampling run share ONE record per
output (`gsm8k.test.None.csv`): its shard-independent fields (effective settings, the ordered task
list before sharding, data-file hashes, model fingerprint, env code and versions) must agree, or the
worker refuses to start (`ProvenanceMismatch`); each worker adds its own entry under `shards`, with
its own code/package versions only where they differ from the record's. Writes take a lock and
replace the file atomically.

File hashes are cached by (path, size, mtime, inode) in `<cache>/provenance/file_sha256.json`, so
workers re-hash a multi-GB weight file only when it changed.

`post_process_test_result.py --see_score` uses `result_identity` + `comparability_problems` to
refuse tables that mix task sets, data files or env/grader versions, and `describe` for `--provenance`.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densepolicy.config import ConfigError
from densepolicy.paths import PROJECT_ROOT, cache_dir, data_dir, serve_python
from densepolicy.results_io import iter_csv, json_text, write_text_atomic
from densepolicy.serving.models import resolve_model

FILE_NAME = "provenance.json"
SCHEMA = 1
NOT_INSTALLED = "not installed"

RESULT_PACKAGES = ("alfworld", "textworld", "minigrid", "math-verify", "vllm", "transformers", "llamafactory",
                   "trl", "peft", "torch", "deepspeed")
"""Packages whose versions shape results (recorded in every record)."""
SERVE_PACKAGES = ("vllm", "transformers", "torch")
"""Read from the serving venv's metadata (the server, not the worker, runs the model)."""
ENV_FAMILY = {"gsm8k": "math", "math": "math", "alfworld": "alfworld", "babyai": "babyai"}
"""Registry env -> prefix of its own modules in envs/ (`math_*.py`); other envs/*.py are shared."""
ENV_PACKAGES = {"math": ("math-verify", "sympy"), "alfworld": ("alfworld", "textworld"),
                "babyai": ("minigrid", "gymnasium")}
"""Packages of an env family (its game engine or grader): part of the eval-set identity."""
MERGED_COLUMNS = ("eval_set_sha256", "model_fingerprint")
"""Columns the merge adds to every row of a merged result CSV."""
MODEL_FILE_NAMES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json",
                    "merges.txt", "added_tokens.json", "model.safetensors.index.json"}
_WEIGHT_FILE = re.compile(r"(.*\.safetensors|(pytorch_)?model.*\.bin|.*\.gguf|consolidated.*\.pth)$")


class ProvenanceMismatch(ConfigError):
    """Results or inputs that must agree do not; the message is one line naming what differs."""


# ------------------------------------------------------------------------------------------ hashing


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def task_set_sha256(task_ids: Iterable[str]) -> str:
    """The eval-set hash: sha256 of the sorted task ids joined by newlines (order-independent)."""
    return hashlib.sha256("\n".join(sorted(str(t) for t in task_ids)).encode()).hexdigest()


def ordered_sha256(task_ids: Iterable[str]) -> str:
    """sha256 of the task ids in the given order, joined by newlines."""
    return hashlib.sha256("\n".join(str(t) for t in task_ids).encode()).hexdigest()


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _lock_path(target: Path) -> Path:
    """Lock files live in the cache, not beside outputs (unlinking a used lock file is racy)."""
    name = hashlib.sha1(str(target.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "provenance" / "locks" / f"{name}.lock"


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    lock = _lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_json_atomic(path: Path, obj: Any) -> None:
    """`results_io.write_text_atomic` of `obj` as JSON (values JSON cannot hold written as text)."""
    write_text_atomic(path, json_text(obj, indent=1, sort_keys=False, default=str) + "\n")


_memo: dict[str, tuple[list[int], str]] = {}


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def hash_cache_file() -> Path:
    """Where file hashes are cached ($DENSEPOLICY_CACHE_DIR/provenance/file_sha256.json)."""
    return cache_dir() / "provenance" / "file_sha256.json"


def sha256_files(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """sha256 of each file, keyed by its resolved path; unchanged files (same size, mtime, inode) come
    from the cache. One process hashes at a time, so workers starting together hash a file once."""
    out: dict[str, str] = {}
    todo: list[tuple[Path, list[int]]] = []
    for raw in paths:
        path = Path(os.path.abspath(raw))  # not resolve(): it stats every path component
        sig = _signature(path)
        hit = _memo.get(str(path))
        if hit and hit[0] == sig:
            out[str(path)] = hit[1]
        else:
            todo.append((path, sig))
    if not todo:
        return out
    cache = hash_cache_file()
    try:
        with _locked(cache):
            try:
                disk = json.loads(cache.read_text()) if cache.is_file() else {}
            except (OSError, json.JSONDecodeError):
                disk = {}
            changed = False
            for path, sig in todo:
                entry = disk.get(str(path))
                if isinstance(entry, list) and entry[:3] == sig:
                    value = entry[3]
                else:
                    value, changed = _sha256_of(path), True
                    disk[str(path)] = sig + [value]
                _memo[str(path)] = (sig, value)
                out[str(path)] = value
            if changed:  # drop entries of files that no longer exist (test and temporary runs)
                disk = {k: v for k, v in disk.items() if os.path.exists(k)}
                _write_json_atomic(cache, disk)
    except OSError:  # read-only cache: hash without it
        for path, sig in todo:
            if str(path) not in out:
                out[str(path)] = _sha256_of(path)
                _memo[str(path)] = (sig, out[str(path)])
    return out


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of one file (cached, see `sha256_files`)."""
    return next(iter(sha256_files([path]).values()))


# ------------------------------------------------------------------------------ code and packages


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """Commit of the checkout and whether tracked files differ from it (null outside a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


@functools.lru_cache(maxsize=1)
def serve_venv_versions() -> dict[str, str]:
    """Versions of SERVE_PACKAGES in the serving venv (.venv-serve), read from its metadata; {} if absent."""
    venv = serve_python().parent.parent
    sites = [str(p) for p in sorted(venv.glob("lib/python*/site-packages"))]
    if not sites:
        return {}
    found = {_normalize(d.metadata["Name"] or ""): d.version for d in importlib.metadata.distributions(path=sites)}
    return {name: found.get(_normalize(name), NOT_INSTALLED) for name in SERVE_PACKAGES}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """RESULT_PACKAGES -> version ("not installed" if absent); vllm from .venv-serve when not importable here."""
    versions = {name: _version(name) for name in RESULT_PACKAGES}
    if versions["vllm"] == NOT_INSTALLED:
        versions["vllm"] = serve_venv_versions().get("vllm", NOT_INSTALLED)
    return versions


def environment() -> dict[str, Any]:
    """Code and package state of this process: git, Python, packages, the serving venv's packages."""
    return {"git": dict(git_state()), "python": platform.python_version(), "platform": platform.platform(),
            "packages": dict(package_versions()), "serve_venv": dict(serve_venv_versions())}


# ---------------------------------------------------------------------------------- identities


def eval_set_record(task_ids: Sequence[str]) -> dict[str, Any]:
    """The ordered task ids, their count, the eval-set hash (sorted) and the hash of the order."""
    ids = [str(t) for t in task_ids]
    return {"count": len(ids), "sha256": task_set_sha256(ids), "order_sha256": ordered_sha256(ids), "task_ids": ids}


def _display_name(path: Path) -> str:
    """A path relative to the data dir, the cache or the project when inside one of them."""
    resolved = path.resolve()
    for root in (data_dir(), cache_dir(), PROJECT_ROOT):
        with contextlib.suppress(ValueError):
            return str(resolved.relative_to(root.resolve()))
    return str(resolved)


def data_files_record(files: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike]) -> dict[str, Any]:
    """sha256 of every file read: `{"sha256": digest over (name, sha256), "files": [...]}`.

    `files` maps a stable name (e.g. `gsm8k/test.jsonl`) to a path, or is a list of paths (named
    relative to the data dir, cache or project)."""
    named = dict(files) if isinstance(files, Mapping) else {_display_name(Path(p)): p for p in files}
    hashes = sha256_files(named.values())
    entries = []
    for name in sorted(named):
        path = Path(os.path.abspath(named[name]))
        entries.append({"name": name, "path": str(path), "size": _memo[str(path)][0][0], "sha256": hashes[str(path)]})
    return {"sha256": digest({e["name"]: e["sha256"] for e in entries}), "files": entries}


def env_data_files(env: Any) -> Mapping[str, Any] | list[Any]:
    """The data files an env says it read (`Env.data_files()`); [] for envs that read none."""
    method = getattr(env, "data_files", None)
    return method() if callable(method) else []


def _is_model_file(name: str) -> bool:
    return name in MODEL_FILE_NAMES or bool(_WEIGHT_FILE.fullmatch(name))


def model_fingerprint(model_dir: str | os.PathLike | None, name: str | None = None,
                      weights: bool = True) -> dict[str, Any]:
    """`{"name", "path", "fingerprint", "files"}`: sha256 of config, tokenizer/template and (unless not
    `weights`) weight files (hashes cached); fingerprint = digest over (file name, sha256). No
    directory -> fingerprint null."""
    if model_dir is None or not Path(model_dir).is_dir():
        return {"name": name or (str(model_dir) if model_dir else None), "path": None, "fingerprint": None,
                "files": {}}
    directory = Path(os.path.abspath(model_dir))
    paths = sorted(p for p in directory.iterdir() if p.is_file() and _is_model_file(p.name)
                   and (weights or p.name in MODEL_FILE_NAMES))
    hashes = sha256_files(paths)
    files = {p.name: hashes[str(p)] for p in paths}
    return {"name": name or directory.name, "path": str(directory), "fingerprint": digest(files), "files": files}


def env_code_files(env_name: str) -> list[Path]:
    """Source files that define an env and its grader: a registry env's own `envs/<family>_*.py` plus
    the shared envs/*.py (not other families'); a custom 'module:Factory' env's module file."""
    if ":" in env_name:
        spec = importlib.util.find_spec(env_name.split(":", 1)[0])
        return [Path(spec.origin)] if spec is not None and spec.origin else []
    family = ENV_FAMILY.get(env_name, env_name)
    others = {f for f in ENV_FAMILY.values() if f != family}
    return [p for p in sorted((PROJECT_ROOT / "envs").glob("*.py"))
            if not any(p.name.startswith(other + "_") for other in others)]


def env_record(env_name: str, split: str) -> dict[str, Any]:
    """The env/grader identity: name, split, sha256 of its source files and its packages' versions."""
    code = data_files_record({_display_name(p): p for p in env_code_files(env_name)})
    family = ENV_FAMILY.get(env_name, env_name)
    return {"name": env_name, "split": split, "code_sha256": code["sha256"],
            "code_files": {e["name"]: e["sha256"] for e in code["files"]},
            "packages": {pkg: _version(pkg) for pkg in ENV_PACKAGES.get(family, ())}}


def timestamp() -> str:
    """The local time now, ISO 8601 with the UTC offset, to the second (`created` / `updated` fields)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# -------------------------------------------------------------------------------- the JSON files


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The content of a provenance file (a directory means its provenance.json); empty if absent.
    A damaged file (bytes that are not UTF-8, truncated or invalid JSON, not a provenance mapping) is
    a one-line `ConfigError` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        return {"schema": SCHEMA, "records": {}}
    fix = "restore it from a copy, or move it away to start a new record (the results are not affected)"
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: damaged provenance file: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          f"{fix}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: damaged provenance file: not valid JSON ({exc.msg}; truncated?); "
                          f"{fix}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the provenance file ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), dict):
        raise ConfigError(f"{path}: damaged provenance file: no 'records' mapping; {fix}")
    return data


def update_record(prov_file: Path, key: str, update: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
    """Locked read-modify-write of `records[key]` in `prov_file` (atomic replace)."""
    prov_file = Path(prov_file)
    prov_file.parent.mkdir(parents=True, exist_ok=True)
    with _locked(prov_file):
        data = read_provenance(prov_file)
        record = update(data["records"].get(key))
        data["schema"] = SCHEMA
        data["records"][key] = record
        _write_json_atomic(prov_file, data)
    return record


def abbreviated(value: Any, n: int = 12) -> str:
    """The first `n` characters of `value` as messages show it ("–" for an empty value)."""
    return "–" if not value else str(value)[:n]


def get_dotted(record: Mapping[str, Any], dotted: str) -> Any:
    """`record["a"]["b"]` for `dotted` "a.b" (None where a part is missing)."""
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


# ---------------------------------------------------------------------------------- the stages


def merged_columns(data_dir: str | os.PathLike, merged_name: str, task_ids: Iterable[str]) -> dict[str, str]:
    """The MERGED_COLUMNS values of a merged result (eval-set hash of its tasks, the run's model
    fingerprint), also stored in the run record under `merged`. Empty fingerprint without a record."""
    ids = list(task_ids)
    prov_file = Path(data_dir) / FILE_NAME
    record = read_provenance(prov_file)["records"].get(merged_name)
    columns = {"eval_set_sha256": task_set_sha256(ids),
               "model_fingerprint": (get_dotted(record, "model.fingerprint") or "") if record else ""}
    if record is not None:
        planned = get_dotted(record, "eval_set.sha256")

        def stamp(old: dict[str, Any] | None) -> dict[str, Any]:
            old = old or record
            old["merged"] = {"file": merged_name, "rows": len(ids), "eval_set_sha256": columns["eval_set_sha256"],
                             "complete": columns["eval_set_sha256"] == planned, "merged_at": timestamp()}
            return old
        update_record(prov_file, merged_name, stamp)
    return columns


def upstream_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What an input file's own provenance says (stage, eval set, model, settings), or that it has none."""
    found = find_record(path)
    summary: dict[str, Any] = {"file": str(Path(path).resolve()), "provenance": None}
    if found is not None:
        prov_file, key, record = found
        summary.update(provenance=f"{prov_file}#{key}", stage=record.get("stage"),
                       eval_set_sha256=get_dotted(record, "eval_set.sha256"),
                       eval_set_count=get_dotted(record, "eval_set.count"),
                       model_fingerprint=get_dotted(record, "model.fingerprint"),
                       settings_sha256=record.get("settings_sha256"))
    return summary


def _output_record(stage: str, output: Path, inputs: Sequence[Path], settings: Mapping[str, Any]) -> dict[str, Any]:
    return {"stage": stage, "file": output.name, "created": timestamp(), "environment": environment(),
            "settings": dict(settings), "settings_sha256": digest(settings),
            "data_files": data_files_record(inputs),
            "output": {"path": str(output.resolve()), "sha256": sha256_file(output), "size": output.stat().st_size},
            "upstream": [upstream_summary(p) for p in inputs]}


def record_pairs(output: str | os.PathLike, inputs: Sequence[str | os.PathLike], settings: Mapping[str, Any]) -> dict[str, Any]:
    """Record a pairs CSV (`--process_result`: inputs = tree dump + result CSV; `--merge_all_pairs`:
    inputs = pairs CSVs) in `provenance.json` beside it."""
    output = Path(output)
    record = _output_record("pairs", output, [Path(p) for p in inputs if p], settings)
    return update_record(output.parent / FILE_NAME, output.name, lambda _old: record)


def dataset_provenance_path(dataset_json: str | os.PathLike) -> Path:
    """`TreeDPO/data/<name>.json` -> `TreeDPO/data/<name>.provenance.json` (the data dir holds many datasets)."""
    path = Path(dataset_json)
    return path.with_name(path.name[: -len(path.suffix)] + ".provenance.json" if path.suffix else path.name + ".provenance.json")


def record_dataset(dataset_json: str | os.PathLike, inputs: Sequence[str | os.PathLike], settings: Mapping[str, Any],
                   tokenizer_model: str | os.PathLike | None = None) -> dict[str, Any]:
    """Record a LLaMA-Factory dataset file (inputs: the pairs CSV and any mixed-in sources)."""
    output = Path(dataset_json)
    record = _output_record("dataset", output, [Path(p) for p in inputs], settings)
    tokenizer = _model_dir(tokenizer_model) if tokenizer_model is not None else None
    record["tokenizer"] = model_fingerprint(tokenizer, weights=False) if tokenizer else None  # length filter only
    return update_record(dataset_provenance_path(output), output.name, lambda _old: record)


def _model_dir(model: str | os.PathLike) -> Path | None:
    """A model directory, or a name of configs/models.yaml ('' = the default); None if unresolvable."""
    if str(model) and Path(model).is_dir():
        return Path(model)
    try:
        return Path(resolve_model(str(model) or None).path)
    except Exception:  # noqa: BLE001 - an unknown tokenizer must not fail the stage; recorded as null
        return None


def record_trained_model(model_dir: str | os.PathLike, train_args: Mapping[str, Any],
                         config: str | os.PathLike | None = None) -> dict[str, Any]:
    """Record a trained model directory: effective LLaMA-Factory arguments, dataset files with their
    provenance, base-model and result-model fingerprints (record key "model")."""
    out = Path(model_dir)
    dataset_dir = Path(str(train_args.get("dataset_dir", ".")))
    try:
        registry = json.loads((dataset_dir / "dataset_info.json").read_text())
    except (OSError, json.JSONDecodeError):
        registry = {}
    datasets = []
    for name in [n.strip() for n in str(train_args.get("dataset", "")).split(",") if n.strip()]:
        file_name = (registry.get(name) or {}).get("file_name")
        path = dataset_dir / file_name if file_name else None
        entry: dict[str, Any] = {"name": name, "file": str(path) if path else None, "sha256": None, "provenance": None}
        if path is not None and path.is_file():
            entry["sha256"] = sha256_file(path)
            found = find_record(path)
            if found is not None:
                entry["provenance"] = f"{found[0]}#{found[1]}"
                entry["upstream"] = found[2].get("upstream")
        datasets.append(entry)
    record = {"stage": "training", "file": "model", "created": timestamp(), "environment": environment(),
              "config": str(config) if config else None, "settings": dict(train_args),
              "settings_sha256": digest(train_args), "datasets": datasets,
              "dataset_sha256": digest([(d["name"], d["sha256"]) for d in datasets]),
              "base_model": model_fingerprint(train_args.get("model_name_or_path")),
              "model": model_fingerprint(out)}
    return update_record(out / FILE_NAME, "model", lambda _old: record)


# ------------------------------------------------------------------------------------- lookup


def _record_keys(name: str) -> list[str]:
    """Names a file's record may have: itself, the `.csv` of a tree dump, the merged name of a shard."""
    names = [name]
    if name.endswith(".jsonl"):
        names.append(name[: -len(".jsonl")] + ".csv")
    for candidate in list(names):
        parts = candidate.split(".")
        if candidate.endswith(".csv") and len(parts) >= 3:
            names.append(".".join(parts[:-2] + ["None", "csv"]))
    return list(dict.fromkeys(names))


def find_record(path: str | os.PathLike) -> tuple[Path, str, dict[str, Any]] | None:
    """(provenance file, key, record) describing `path`: a result/pairs/dataset file, a model or run
    directory (its only record, or "model"), or a provenance file itself; None if there is none."""
    path = Path(path)
    if path.is_dir() or path.name == FILE_NAME or path.name.endswith(".provenance.json"):
        prov_file = path / FILE_NAME if path.is_dir() else path
        records = read_provenance(prov_file)["records"]
        key = "model" if "model" in records else (next(iter(records)) if len(records) == 1 else None)
        return (prov_file, key, records[key]) if key else None
    sidecar = dataset_provenance_path(path)
    if sidecar.is_file():
        records = read_provenance(sidecar)["records"]
        if path.name in records:
            return sidecar, path.name, records[path.name]
    folders = [path.parent]
    if path.parent.name in ("trees", "distributed_result"):
        folders.append(path.parent.parent)
    if path.parent.name == "trees" and path.parent.parent.name == "distributed_result":
        folders.append(path.parent.parent.parent)
    name = re.sub(r"~\d+(?=\.)", "", path.name)  # archived copy `<K>~<n>` of shard K
    for folder in folders:
        prov_file = folder / FILE_NAME
        records = read_provenance(prov_file)["records"]
        for key in _record_keys(name):
            if key in records:
                return prov_file, key, records[key]
    return None


# ------------------------------------------------------------------------------ comparing results


@dataclass
class ResultIdentity:
    """What identifies one result file in a score table: its task set and (if any) its run record."""

    label: str
    dataset: str
    path: Path
    task_ids: set[str] = field(default_factory=set)
    model_column: str = ""
    record: dict[str, Any] | None = None
    provenance: str | None = None

    @property
    def eval_set(self) -> str:
        return task_set_sha256(self.task_ids)

    @property
    def model_fingerprint(self) -> str:
        return (get_dotted(self.record, "model.fingerprint") if self.record else None) or self.model_column


def result_identity(path: str | os.PathLike, label: str, dataset: str) -> ResultIdentity:
    """Read a result CSV's task ids (and its merged `model_fingerprint` column) and find its record."""
    ident = ResultIdentity(label=label, dataset=dataset, path=Path(path))
    for _, row in iter_csv(path):
        ident.task_ids.add(str(row.get("task_id", "")))
        ident.model_column = ident.model_column or row.get("model_fingerprint", "") or ""
    found = find_record(path)
    if found is not None:
        ident.provenance, ident.record = f"{found[0]}#{found[1]}", found[2]
    return ident


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            return f"{name} ({abbreviated(a.get(name), 16) if a.get(name) else 'absent'} vs " \
                   f"{abbreviated(b.get(name), 16) if b.get(name) else 'absent'})"
    return None


def comparability_problems(idents: Sequence[ResultIdentity]) -> list[tuple[str, str]]:
    """(dataset, one line) per problem: results of one dataset (one table column) evaluated on different
    task sets, data files, env/grader code or env/grader package versions (each compared with the first)."""
    problems: list[tuple[str, str]] = []
    by_dataset: dict[str, list[ResultIdentity]] = {}
    for ident in idents:
        by_dataset.setdefault(ident.dataset, []).append(ident)
    for dataset, group in by_dataset.items():
        ref = group[0]
        for other in group[1:]:
            pair = f"{dataset}: {ref.label!r} vs {other.label!r}"
            if ref.task_ids != other.task_ids:
                shared = len(ref.task_ids & other.task_ids)
                problems.append((dataset, f"{pair}: different task sets ({len(ref.task_ids)} vs "
                                          f"{len(other.task_ids)} tasks, {shared} shared; eval set "
                                          f"{abbreviated(ref.eval_set)} vs {abbreviated(other.eval_set)})"))
            if ref.record is None or other.record is None:
                continue
            files_a = {f["name"]: f["sha256"] for f in get_dotted(ref.record, "data_files.files") or []}
            files_b = {f["name"]: f["sha256"] for f in get_dotted(other.record, "data_files.files") or []}
            diff = _first_difference(files_a, files_b)
            if diff:
                problems.append((dataset, f"{pair}: different data files: {diff}"))
            diff = _first_difference(get_dotted(ref.record, "env.packages") or {},
                                     get_dotted(other.record, "env.packages") or {})
            if diff:
                problems.append((dataset, f"{pair}: different env/grader package versions: {diff}"))
            diff = _first_difference(get_dotted(ref.record, "env.code_files") or {},
                                     get_dotted(other.record, "env.code_files") or {})
            if diff:
                problems.append((dataset, f"{pair}: different env/grader code: {diff}"))
    return problems


IDENTITY_HEADER = ["model", "dataset", "eval set (n)", "model fingerprint", "data files", "env/grader", "commit"]


def identity_rows(idents: Sequence[ResultIdentity]) -> list[list[str]]:
    """One row per result file for the provenance footer of a score table."""
    rows = []
    for ident in idents:
        record = ident.record or {}
        git = get_dotted(record, "environment.git") or {}
        commit = abbreviated(git.get("commit"), 10) + ("+dirty" if git.get("dirty") else "") if git else "–"
        env = "–"
        if record:
            packages = ", ".join(f"{k} {v}" for k, v in (get_dotted(record, "env.packages") or {}).items())
            env = abbreviated(get_dotted(record, "env.code_sha256"), 8) + (f" ({packages})" if packages else "")
        rows.append([ident.label, ident.dataset, f"{abbreviated(ident.eval_set)} ({len(ident.task_ids)})",
                     abbreviated(ident.model_fingerprint),
                     abbreviated(get_dotted(record, "data_files.sha256")) if record else "–", env, commit])
    return rows


# ------------------------------------------------------------------------------------ printing


def describe(path: str | os.PathLike) -> str:
    """A short human-readable summary of the record(s) at `path` (`--provenance`)."""
    path = Path(path)
    if path.is_dir() or path.name == FILE_NAME or path.name.endswith(".provenance.json"):
        prov_file = path / FILE_NAME if path.is_dir() else path
        if not prov_file.is_file():
            raise FileNotFoundError(f"no provenance file at {prov_file}")
        items = list(read_provenance(prov_file)["records"].items())
    else:
        found = find_record(path)
        if found is None:
            raise FileNotFoundError(f"no provenance record for {path}")
        prov_file, items = found[0], [(found[1], found[2])]
    parts = []
    for key, record in items:
        parts.append(f"{prov_file} [{key}]\n" + _describe_record(record))
    return "\n\n".join(parts)


def _describe_record(record: Mapping[str, Any]) -> str:
    env = record.get("environment") or {}
    git = env.get("git") or {}
    packages = env.get("packages") or {}
    installed = ", ".join(f"{k} {v}" for k, v in packages.items() if v != NOT_INSTALLED)
    missing = ", ".join(k for k, v in packages.items() if v == NOT_INSTALLED)
    lines = [f"  stage     : {record.get('stage')}  (created {record.get('created')}, updated {record.get('updated', '–')})",
             f"  code      : git {abbreviated(git.get('commit'))}{' (dirty)' if git.get('dirty') else ''}, "
             f"python {env.get('python')}",
             f"  packages  : {installed or '–'}" + (f"; not installed: {missing}" if missing else "")]
    model = record.get("model")
    if isinstance(model, Mapping):
        lines.append(f"  model     : {model.get('name')}  fingerprint {abbreviated(model.get('fingerprint'))}  "
                     f"({len(model.get('files') or {})} files{', ' + model['path'] if model.get('path') else ''})")
    base = record.get("base_model")
    if isinstance(base, Mapping):
        lines.append(f"  base model: {base.get('name')}  fingerprint {abbreviated(base.get('fingerprint'))}")
    eval_set = record.get("eval_set")
    if isinstance(eval_set, Mapping):
        ids = eval_set.get("task_ids") or []
        lines.append(f"  eval set  : {eval_set.get('count')} tasks, sha256 {abbreviated(eval_set.get('sha256'))}"
                     + (f" ({ids[0]} … {ids[-1]})" if ids else ""))
    if "merged" in record:
        merged = record["merged"]
        lines.append(f"  merged    : {merged.get('rows')} rows, eval set {abbreviated(merged.get('eval_set_sha256'))}"
                     f"{'' if merged.get('complete') else ' (INCOMPLETE: differs from the planned set)'}")
    env_rec = record.get("env")
    if isinstance(env_rec, Mapping):
        pk = ", ".join(f"{k} {v}" for k, v in (env_rec.get("packages") or {}).items())
        code = abbreviated(env_rec.get("code_sha256"))
        lines.append(f"  env       : {env_rec.get('name')}/{env_rec.get('split')}  code {code}"
                     + (f"  ({pk})" if pk else ""))
    files = get_dotted(record, "data_files.files") or []
    if files or "data_files" in record:
        shown = ", ".join(f"{f['name']} {abbreviated(f['sha256'], 8)}" for f in files[:3])
        lines.append(f"  data files: {len(files)} (sha256 {abbreviated(get_dotted(record, 'data_files.sha256'))})"
                     + (f": {shown}" + (" …" if len(files) > 3 else "") if files else ""))
    for dataset in record.get("datasets") or []:
        lines.append(f"  dataset   : {dataset.get('name')} sha256 {abbreviated(dataset.get('sha256'))}"
                     f"  provenance {dataset.get('provenance') or '–'}")
    for up in record.get("upstream") or []:
        if isinstance(up, Mapping):
            lines.append(f"  input     : {Path(str(up.get('file'))).name}  "
                         + (f"eval set {abbreviated(up.get('eval_set_sha256'))}, "
                            f"model {abbreviated(up.get('model_fingerprint'))}"
                            if up.get("provenance") else "no provenance"))
    settings = record.get("settings") or {}
    lines.append(f"  settings  : {len(settings)} keys, sha256 {abbreviated(record.get('settings_sha256'))}")
    shards = record.get("shards") or {}
    if shards:
        mixed = [k for k, v in shards.items() if "environment" in v]
        lines.append(f"  shards    : {len(shards)} of {settings.get('num_shards', '?')} ({', '.join(sorted(shards, key=int))})"
                     + (f"; shard(s) {', '.join(mixed)} ran with other code/packages" if mixed else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m densepolicy.provenance PATH`: print a record (same as `--provenance PATH`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    for arg in args:
        print(describe(arg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
