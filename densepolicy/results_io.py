"""Streaming readers and atomic writers for the result files of docs/formats.md.

Readers never load a whole file: they yield one record at a time and raise `CorruptFileError`
naming the file and line when a record is truncated or malformed, a byte is not UTF-8, or a CSV
file is empty (0 bytes: every writer writes a header first, so something went wrong). Writers go through a temp file
in the target directory + fsync + rename, so a reader never sees half a file.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

csv.field_size_limit(sys.maxsize)  # histories can be megabytes in one cell

log = logging.getLogger(__name__)

FIX_THEN_RERUN_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
"""Write failures that the user fixes outside the program (space, quota, read-only, permissions)."""

_UNSAFE_JSON = re.compile("[\u2028\u2029\ud800-\udfff]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_REPLACEMENT = "\ufffd"
_replaced = {"count": 0}
_replaced_lock = threading.Lock()

JSON_COLUMNS = ("history", "extra", "prompt")
"""CSV columns whose cells hold JSON (empty cells are allowed)."""


class CorruptFileError(ValueError):
    """A result file is truncated or malformed; the message names the file and line."""

    def __init__(self, path: str | os.PathLike, line: int, problem: str):
        super().__init__(f"{path}:{line}: {problem}")
        self.path, self.line, self.problem = Path(path), line, problem


class OutputWriteError(OSError):
    """An output could not be written for a reason the user fixes (disk full, quota, read-only file
    system, permissions); the one-line message names the file, what to do, and that a rerun resumes."""

    def __init__(self, path: str | os.PathLike, exc: OSError, rerun: str = "rerun the same command to resume"):
        self.path = Path(path)
        super().__init__(exc.errno, exc.strerror or str(exc), str(self.path))
        self.message = (f"cannot write {self.path}: {exc.strerror or exc} ({errno.errorcode.get(exc.errno, exc.errno)}); "
                        f"{fix_advice(self.path, exc.errno)}, then {rerun}")

    def __str__(self) -> str:
        return self.message


def fix_advice(path: str | os.PathLike, err: int | None) -> str:
    """What the user must do about write error `err` on `path` (one clause)."""
    where = Path(path).parent
    if err in (errno.ENOSPC, errno.EDQUOT):
        return f"free disk space (or quota) on the file system of {where} (see `df -h {where}`)"
    if err == errno.EROFS:
        return f"the file system of {where} is read-only: remount it read-write or choose another output directory"
    return f"give this user write permission on {where} (and the files in it)"


def is_fix_then_rerun(exc: BaseException) -> bool:
    """True for an `OSError` the user fixes outside the program (see `FIX_THEN_RERUN_ERRNOS`)."""
    return isinstance(exc, OSError) and exc.errno in FIX_THEN_RERUN_ERRNOS


@contextlib.contextmanager
def writing(path: str | os.PathLike, rerun: str = "rerun the same command to resume") -> Iterator[None]:
    """Turn disk-full / read-only / permission errors raised in the body into `OutputWriteError(path)`."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as exc:
        if exc.errno in FIX_THEN_RERUN_ERRNOS:
            raise OutputWriteError(exc.filename or path, exc, rerun) from None
        raise


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate (not encodable as UTF-8) replaced by U+FFFD; replacements are
    counted (`replaced_surrogates()`) and logged once per call that replaces any."""
    fixed, n = _LONE_SURROGATE.subn(SURROGATE_REPLACEMENT, text)
    if n:
        with _replaced_lock:
            _replaced["count"] += n
        log.warning("replaced %d lone surrogate code point(s) (not encodable as UTF-8) by U+FFFD", n)
    return fixed


def replaced_surrogates() -> int:
    """How many lone surrogates this process has replaced by U+FFFD so far."""
    return _replaced["count"]


def _replace_surrogates_handler(exc: UnicodeError) -> tuple[str, int]:
    if isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start:exc.end]
        if _LONE_SURROGATE.fullmatch(bad[:1] or "x"):
            without_surrogates(bad)
            return SURROGATE_REPLACEMENT * len(bad), exc.end
    raise exc


SURROGATE_ERRORS = "densepolicy.replace_surrogates"
codecs.register_error(SURROGATE_ERRORS, _replace_surrogates_handler)


def json_line(obj: Any) -> str:
    """`obj` as one JSONL line (with its newline) that every line splitter and UTF-8 encoder accepts:
    non-ASCII text is kept, but U+2028, U+2029 (line breaks to `str.splitlines()`) and lone surrogates
    (which a server can send as `\\ud800` and which UTF-8 cannot encode) are written as `\\uXXXX`
    escapes, so `json.loads` gives back exactly the same string."""
    text = json.dumps(obj, ensure_ascii=False)
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def json_text(obj: Any, **kwargs: Any) -> str:
    """`json.dumps(obj, ensure_ascii=False, **kwargs)` with the escapes of `json_line` (no newline)."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def split_jsonl(text: str) -> list[str]:
    """The lines of JSONL `text`, split on \\n only (unlike `str.splitlines()`, which also splits on
    U+2028, U+2029, form feeds and other characters a JSON string may hold raw)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _umask() -> int:
    """The process umask, read from /proc (Linux) so that no other thread sees it changed."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _replaced_lock:  # os.umask can only be read by setting it; keep the window closed to our threads
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


class OutputExistsError(FileExistsError):
    """Refusing to overwrite an existing output file."""


def ensure_new(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return `path` if it may be written; raise `OutputExistsError` if it exists and not `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} already exists (pass --overwrite to replace it)")
    return path


def undecodable(path: str | os.PathLike, exc: UnicodeDecodeError | None = None) -> CorruptFileError:
    """A `CorruptFileError` naming the first line of `path` that is not UTF-8 (and the bad byte)."""
    path = Path(path)
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return CorruptFileError(path, number, f"not UTF-8 text (byte 0x{raw[bad.start]:02x} at column "
                                                      f"{bad.start + 1})")
    return CorruptFileError(path, 1, f"not UTF-8 text ({exc.reason if exc else 'undecodable'})")


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return True
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    A line that is not a JSON object, or a last line without its newline (a writer killed
    mid-line), raises `CorruptFileError`.
    """
    path = Path(path)
    try:
        yield from _iter_jsonl(path)
    except UnicodeDecodeError as exc:
        raise undecodable(path, exc) from None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    truncated_tail = not _ends_with_newline(path)
    with path.open("r", encoding="utf-8") as fh:
        line_no = 0
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if truncated_tail and not line.endswith("\n"):
                raise CorruptFileError(path, line_no, "truncated last line (no newline at end of file)")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorruptFileError(path, line_no, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise CorruptFileError(path, line_no, f"expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def read_csv_header(path: str | os.PathLike) -> list[str]:
    """The column names of a CSV file ([] for an empty file)."""
    try:
        with Path(path).open("r", encoding="utf-8", newline="") as fh:
            return next(csv.reader(fh, strict=True), [])
    except UnicodeDecodeError as exc:
        raise undecodable(path, exc) from None


def iter_csv(path: str | os.PathLike, json_columns: Iterable[str] = JSON_COLUMNS,
             parse_json: bool = False) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` for each data row of a CSV file with a header.

    Rows with the wrong number of cells, unterminated quotes, a missing final newline or (for
    `json_columns`) a cell that is not valid JSON raise `CorruptFileError`. Cells stay strings
    unless `parse_json` is true, in which case the JSON columns are decoded. A zero-byte file
    (not even a header) and bytes that are not UTF-8 raise `CorruptFileError` too.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise CorruptFileError(path, 1, "empty file (0 bytes, not even a header line)")
    try:
        yield from _iter_csv(path, set(json_columns), parse_json)
    except UnicodeDecodeError as exc:
        raise undecodable(path, exc) from None


def _iter_csv(path: Path, json_columns: set[str], parse_json: bool) -> Iterator[tuple[int, dict[str, str]]]:
    truncated_tail = not _ends_with_newline(path)
    with path.open("r", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        try:
            header = next(reader)
        except csv.Error as exc:
            raise CorruptFileError(path, 1, f"malformed header ({exc})") from None
        if len(set(header)) != len(header):
            raise CorruptFileError(path, 1, "duplicate column names in header")
        line_start = reader.line_num + 1
        pending: tuple[int, dict[str, str]] | None = None  # one-row lookahead to spot the last row
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise CorruptFileError(path, line_start, f"malformed CSV row ({exc})") from None
            if not cells:
                line_start = reader.line_num + 1
                continue
            if len(cells) != len(header):
                problem = (f"row has {len(cells)} cells, header has {len(header)}"
                           + (" (file truncated?)" if truncated_tail else ""))
                raise CorruptFileError(path, line_start, problem)
            row = dict(zip(header, cells))
            for col in json_columns.intersection(row):
                if row[col] == "":
                    continue
                try:
                    value = json.loads(row[col])
                except json.JSONDecodeError:
                    raise CorruptFileError(path, line_start, f"column {col!r} is not valid JSON") from None
                if parse_json:
                    row[col] = value
            if pending is not None:
                yield pending
            pending = (line_start, row)
            line_start = reader.line_num + 1
        if pending is not None:
            if truncated_tail:  # the writer was killed while writing the last row
                raise CorruptFileError(path, pending[0], "truncated last row (no newline at end of file)")
            yield pending


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[TextIO]:
    """Open a temp file next to `path`; on success fsync and rename it onto `path`.

    If the body raises, the temp file is removed and `path` is untouched. The file gets the mode a
    plain `open()` would give it (0666 minus the umask), not `mkstemp`'s 0600, so collaborators can
    read results on a shared file system. Text that UTF-8 cannot encode (lone surrogates) is written
    as U+FFFD and counted. A full disk, a read-only file system or missing permissions raise
    `OutputWriteError` naming `path`.
    """
    path = Path(path)
    if "b" not in mode and kwargs.get("encoding", "").lower().replace("-", "") == "utf8":
        kwargs.setdefault("errors", SURROGATE_ERRORS)
    tmp = None
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, mode, **kwargs) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON to `path` atomically (UTF-8, non-ASCII kept; U+2028/U+2029 and lone
    surrogates escaped as in `json_line`)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(json_text(obj, indent=indent) + "\n")


def encode_cell(value: Any) -> Any:
    """CSV cell for `value`: lists/dicts become JSON, None becomes empty, the rest is kept."""
    if isinstance(value, (list, dict)):
        return json_text(value)
    if value is None:
        return ""
    return value


def write_csv_atomic(path: str | os.PathLike, fieldnames: list[str],
                     rows: Iterable[Mapping[str, Any]]) -> int:
    """Stream `rows` into a CSV at `path` atomically; structured cells are JSON. Returns the row count."""
    count = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: encode_cell(row.get(k)) for k in fieldnames})
            count += 1
    return count
