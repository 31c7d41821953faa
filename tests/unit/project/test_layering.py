"""The import layering of docs/architecture.md is enforced: the contracts in .importlinter hold, every module
directly under densepolicy/ has a layer, an upward import breaks `lint-imports` (and so `make lint`), and the
environments' own file locator agrees with densepolicy.paths."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from densepolicy import paths
from envs import locations

ROOT = Path(__file__).resolve().parents[3]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("densepolicy", "agents", "envs")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: import-linter comes with requirements.txt (make setup)")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def copy_tree(dst: Path) -> Path:
    """The three packages and the contracts, without caches (a few hundred small files)."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", dst / ".importlinter")
    return dst


def layered_modules() -> set[str]:
    """Every module named in the layers of the pipeline contract."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    layers = parser["importlinter:contract:pipeline"]["layers"]
    return {name.strip() for line in layers.splitlines() for name in line.split("|") if name.strip()}


def test_the_contracts_hold_on_this_checkout():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_every_module_under_densepolicy_has_a_layer():
    children = {f"densepolicy.{p.stem}" for p in (ROOT / "densepolicy").glob("*.py") if p.stem != "__init__"}
    children |= {f"densepolicy.{p.parent.name}" for p in (ROOT / "densepolicy").glob("*/__init__.py")}
    missing = children - layered_modules()
    assert not missing, f"add these to a layer in .importlinter (and docs/architecture.md): {sorted(missing)}"


@pytest.mark.parametrize("importer, line, imported, contract", [
    ("envs/base.py", "import densepolicy.sampling.config", "densepolicy.sampling.config", "standalone"),
    ("agents/tree.py", "from densepolicy.sampling import worker", "densepolicy.sampling.worker", "layers"),
    ("densepolicy/results_io.py", "def _late():\n    from densepolicy.postprocess import merge",
     "densepolicy.postprocess.merge", "layers"),
])
def test_an_upward_import_breaks_the_contract_naming_it(tmp_path, importer, line, imported, contract):
    tree = copy_tree(tmp_path)
    target = tree / importer
    target.write_text(target.read_text() + f"\n\n{line}\n")
    out = lint_imports(tree)
    assert out.returncode == 1, out.stdout + out.stderr
    importer_module = importer[:-3].replace("/", ".")
    assert f"{importer_module} -> {imported}" in out.stdout, out.stdout
    broken = {"standalone": "The environments are standalone", "layers": "The pipeline's layers"}[contract]
    assert broken in out.stdout.split("Broken contracts", 1)[-1], out.stdout


def test_an_import_cycle_inside_a_layer_breaks_the_contract(tmp_path):
    tree = copy_tree(tmp_path)
    cli = tree / "densepolicy" / "launcher" / "commands.py"
    cli.write_text(cli.read_text() + "\n\nfrom densepolicy.launcher import cli  # a cycle: cli imports commands\n")
    out = lint_imports(tree)
    assert out.returncode == 1 and "No import cycles" in out.stdout, out.stdout


def test_the_envs_locator_agrees_with_densepolicy_paths(monkeypatch, tmp_path):
    assert locations.CHECKOUT_ROOT == paths.PROJECT_ROOT
    for data, cache in ((None, None), (str(tmp_path / "data"), str(tmp_path / "cache")), ("rel/data", None)):
        for name, value in (("DENSEPOLICY_DATA_DIR", data), ("DENSEPOLICY_CACHE_DIR", cache)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        assert locations.data_dir() == paths.data_dir()
        assert locations.data_dir("my/data") == paths.data_dir("my/data")
        assert locations.cache_dir() == paths.cache_dir()
