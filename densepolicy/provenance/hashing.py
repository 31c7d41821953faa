"""Hashes that identify inputs: canonical JSON, task sets, data files and model directories.

File hashes are cached by (path, size, mtime, inode) in `<cache>/provenance/file_sha256.json`, so
workers re-hash a multi-GB weight file only when it changed; one process hashes at a time (under the
cache's lock, `locking.locked`), so workers starting together hash a file once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from densepolicy.paths import PROJECT_ROOT, cache_dir, data_dir
from densepolicy.provenance.locking import locked, write_json

MODEL_FILE_NAMES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json",
                    "merges.txt", "added_tokens.json", "model.safetensors.index.json"}
_WEIGHT_FILE = re.compile(r"(.*\.safetensors|(pytorch_)?model.*\.bin|.*\.gguf|consolidated.*\.pth)$")


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def task_set_sha256(task_ids: Iterable[str]) -> str:
    """The eval-set hash: sha256 of the sorted task ids joined by newlines (order-independent)."""
    return hashlib.sha256("\n".join(sorted(str(t) for t in task_ids)).encode()).hexdigest()


def ordered_sha256(task_ids: Iterable[str]) -> str:
    """sha256 of the task ids in the given order, joined by newlines."""
    return hashlib.sha256("\n".join(str(t) for t in task_ids).encode()).hexdigest()


def abbreviated(value: Any, n: int = 12) -> str:
    """The first `n` characters of `value` (a hash, a commit) as messages show it ("–" for an empty value)."""
    return "–" if not value else str(value)[:n]


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_memo: dict[str, tuple[list[int], str]] = {}


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def hash_cache_file() -> Path:
    """Where file hashes are cached ($DENSEPOLICY_CACHE_DIR/provenance/file_sha256.json)."""
    return cache_dir() / "provenance" / "file_sha256.json"


def _read_cache(cache: Path) -> dict[str, Any]:
    try:
        disk = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        return {}
    return disk if isinstance(disk, dict) else {}


def _cached(disk: Mapping[str, Any], path: Path, sig: list[int]) -> bool:
    entry = disk.get(str(path))
    return isinstance(entry, list) and len(entry) == 4 and entry[:3] == sig


def sha256_files(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """sha256 of each file, keyed by its resolved path; unchanged files (same size, mtime, inode) come
    from the cache (read without a lock when it holds them all). Hashing takes the cache's lock, so one process
    hashes at a time and workers starting together hash a file once."""
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
    disk = _read_cache(cache)  # replaced atomically, so readable without the lock: all cached -> no lock taken
    if all(_cached(disk, path, sig) for path, sig in todo):
        for path, sig in todo:
            _memo[str(path)] = (sig, disk[str(path)][3])
            out[str(path)] = disk[str(path)][3]
        return out
    try:
        with locked(cache):
            disk = _read_cache(cache)
            changed = False
            for path, sig in todo:
                if _cached(disk, path, sig):
                    value = disk[str(path)][3]
                else:
                    value, changed = _sha256_of(path), True
                    disk[str(path)] = sig + [value]
                _memo[str(path)] = (sig, value)
                out[str(path)] = value
            if changed:  # drop entries of files that no longer exist (test and temporary runs)
                disk = {k: v for k, v in disk.items() if os.path.exists(k)}
                write_json(cache, disk)
    except OSError:  # read-only cache: hash without it
        for path, sig in todo:
            if str(path) not in out:
                out[str(path)] = _sha256_of(path)
                _memo[str(path)] = (sig, out[str(path)])
    return out


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of one file (cached, see `sha256_files`)."""
    return next(iter(sha256_files([path]).values()))


def display_name(path: Path) -> str:
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
    named = dict(files) if isinstance(files, Mapping) else {display_name(Path(p)): p for p in files}
    hashes = sha256_files(named.values())
    entries = []
    for name in sorted(named):
        path = Path(os.path.abspath(named[name]))
        entries.append({"name": name, "path": str(path), "size": _memo[str(path)][0][0], "sha256": hashes[str(path)]})
    return {"sha256": digest({e["name"]: e["sha256"] for e in entries}), "files": entries}


def eval_set_record(task_ids: Sequence[str]) -> dict[str, Any]:
    """The ordered task ids, their count, the eval-set hash (sorted) and the hash of the order."""
    ids = [str(t) for t in task_ids]
    return {"count": len(ids), "sha256": task_set_sha256(ids), "order_sha256": ordered_sha256(ids), "task_ids": ids}


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
