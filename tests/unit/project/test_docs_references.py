"""Every reference to the original pipeline points inside the repository: `docs/original.md §x.y`.

Fails when a tracked file still cites the old out-of-repository spec (`spec` + ` §`, `../shared/` + `spec`),
or cites a section or numbered item that docs/original.md does not have. `§A.B` resolves to the heading
`A.B` or, when there is none, to item B of the numbered list under heading `A` (`§10.14` = item 14 of §10);
`§6.1 step 5` / `§10 item 26` name item 5 / 26 under that heading; `§3.4-3.5` checks both ends.
In a file that names docs/original.md, every `§x.y` is taken to cite it (docs/deviations.md, presets.py and
docs/original.md itself use bare `§x.y` after naming the page once), so all of them are checked.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest


def _root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "docs" / "original.md").is_file() or (parent / "pyproject.toml").is_file():
            return parent
    raise AssertionError("project root not found above " + __file__)


ROOT = _root()
ORIGINAL = ROOT / "docs" / "original.md"
# Built from pieces so that this file does not match itself.
STALE = ("spec" + " §", "../shared/" + "spec")
REF = re.compile(r"§(\d+(?:\.\d+)?)(?:\s*[-–]\s*§?(\d+(?:\.\d+)?))?(?:\s+(?:step|item)\s+(\d+))?")
PAGE = "docs/original.md"
SELF = Path(__file__).resolve()
SKIP_DIRS = {".git", "__pycache__", "node_modules"}


def tracked_files() -> list[Path]:
    """`git ls-files` of the checkout; without git (a copied tree) every file outside venvs and caches."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
        if names:
            return [ROOT / n for n in names]
    except (OSError, subprocess.CalledProcessError):
        pass
    return [p for p in ROOT.rglob("*") if p.is_file()
            and not any(part in SKIP_DIRS or part.startswith(".venv") for part in p.relative_to(ROOT).parts)]


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def sections_and_items(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Heading numbers (`## 3. Tree agent` -> "3", `### 3.4 Statistics tree` -> "3.4") and the numbered
    list items under each heading ((heading, item number))."""
    sections: set[str] = set()
    items: set[tuple[str, str]] = set()
    current = None
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        heading = re.match(r"#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", line)
        if heading:
            current = heading.group(1)
            sections.add(current)
            continue
        item = re.match(r"(\d+)\.\s", line)
        if item and current is not None:
            items.add((current, item.group(1)))
    return sections, items


def unresolved(text: str, sections: set[str], items: set[tuple[str, str]]) -> list[str]:
    def exists(ref: str) -> bool:
        if ref in sections:
            return True
        head, _, tail = ref.rpartition(".")
        return bool(head) and (head, tail) in items

    bad = []
    for m in REF.finditer(text):
        first, last, item = m.groups()
        if not exists(first) or (last and not exists(last)) or (item and (first, item) not in items):
            bad.append(m.group(0))
    return bad


@pytest.fixture(scope="module")
def original() -> tuple[set[str], set[tuple[str, str]]]:
    assert ORIGINAL.is_file(), "docs/original.md is missing"
    return sections_and_items(ORIGINAL.read_text(encoding="utf-8"))


def test_original_has_the_numbered_sections(original: tuple[set[str], set[tuple[str, str]]]) -> None:
    sections, items = original
    for number in ["0", "0.1", "0.2", *map(str, range(1, 13)), "1.2", "2.1", "2.7", "3.4", "3.9", "4.3",
                   "6.1", "6.2"]:
        assert number in sections, f"docs/original.md has no section {number}"
    assert {("10", str(n)) for n in range(1, 29)} <= items, "§10 should number its items 1-28"


def test_no_reference_to_the_out_of_repository_spec() -> None:
    offenders = []
    for path in tracked_files():
        text = read_text(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if any(s in line for s in STALE):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()[:120]}")
    assert not offenders, "cite docs/original.md instead:\n" + "\n".join(offenders)


def test_every_cited_section_exists(original: tuple[set[str], set[tuple[str, str]]]) -> None:
    sections, items = original
    offenders = []
    for path in tracked_files():
        text = read_text(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        if path.resolve() == SELF or (PAGE not in text and rel != PAGE):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            offenders += [f"{rel}:{lineno}: {ref}" for ref in unresolved(line, sections, items)]
    assert not offenders, "no such section or item in docs/original.md:\n" + "\n".join(offenders)


def test_the_resolver_rejects_what_does_not_exist(original: tuple[set[str], set[tuple[str, str]]]) -> None:
    sections, items = original
    assert unresolved("§3.4, §3.4-3.5, §10.14, §6.1 step 5, §10 item 26, §12.5", sections, items) == []
    assert unresolved("§3.99", sections, items) == ["§3.99"]
    assert unresolved("§10.29", sections, items) == ["§10.29"]
    assert unresolved("§6.1 step 9", sections, items) == ["§6.1 step 9"]
    assert unresolved("§3.4-3.99", sections, items) == ["§3.4-3.99"]


def test_every_module_is_in_the_architecture_page():
    """docs/architecture.md names every module of densepolicy/, agents/ and envs/ (a package's empty or one-line
    `__init__.py` excepted), so a new module cannot be added without its line there."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for base in ("densepolicy", "agents", "envs"):
        for path in sorted((ROOT / base).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name = path.relative_to(ROOT).as_posix()
            if path.name == "__init__.py" and len(path.read_text(encoding="utf-8").strip().splitlines()) <= 1:
                continue
            if f"`{name}`" not in doc:
                missing.append(name)
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
