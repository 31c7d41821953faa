"""Which code and packages ran: the git commit, package versions, and an env's own code and packages.

    environment()               # git, Python, platform, RESULT_PACKAGES, the serving venv's packages
    env_record("gsm8k", "test") # the env/grader identity: sha256 of its source files, its packages
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from densepolicy.paths import PROJECT_ROOT, serve_python
from densepolicy.provenance.hashing import data_files_record, display_name
from envs.spec import ENV_SPECS

NOT_INSTALLED = "not installed"

RESULT_PACKAGES = ("alfworld", "textworld", "minigrid", "math-verify", "vllm", "transformers", "llamafactory",
                   "trl", "peft", "torch", "deepspeed")
"""Packages whose versions shape results (recorded in every record)."""
SERVE_PACKAGES = ("vllm", "transformers", "torch")
"""Read from the serving venv's metadata (the server, not the worker, runs the model)."""
ENV_FAMILY = {name: spec.family for name, spec in ENV_SPECS.items()}
"""Registry env -> prefix of its own modules in envs/ (`math_*.py`); other envs/*.py are shared (envs/spec.py)."""
ENV_PACKAGES = {spec.family: spec.packages for spec in ENV_SPECS.values()}
"""Packages of an env family (its game engine or grader): part of the eval-set identity (envs/spec.py)."""


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


def env_data_files(env: Any) -> Mapping[str, Any] | list[Any]:
    """The data files an env says it read (`Env.data_files()`); [] for envs that read none."""
    method = getattr(env, "data_files", None)
    return method() if callable(method) else []


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
    code = data_files_record({display_name(p): p for p in env_code_files(env_name)})
    family = ENV_FAMILY.get(env_name, env_name)
    return {"name": env_name, "split": split, "code_sha256": code["sha256"],
            "code_files": {e["name"]: e["sha256"] for e in code["files"]},
            "packages": {pkg: _version(pkg) for pkg in ENV_PACKAGES.get(family, ())}}
