"""Where things live: the project root, the data directory, the venvs and the embedded model.

Every location can be overridden (config keys or environment variables); nothing here is absolute.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The checkout this package was imported from."""

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The offline data directory: `override`, else $DENSEPOLICY_DATA_DIR, else `../shared/data`."""
    raw = override or os.environ.get("DENSEPOLICY_DATA_DIR") or PROJECT_ROOT.parent / "shared" / "data"
    path = Path(raw)
    if not path.is_absolute():
        path = (PROJECT_ROOT / path).resolve()
    return path


def cache_dir() -> Path:
    """Git-ignored cache for unpacked data (ALFWorld games) and temporary artefacts."""
    return Path(os.environ.get("DENSEPOLICY_CACHE_DIR", PROJECT_ROOT / ".cache"))


def models_dir() -> Path:
    """Where the embedded model (and other local models) are built."""
    return Path(os.environ.get("DENSEPOLICY_MODELS_DIR", PROJECT_ROOT / "models"))


def embedded_model_dir() -> Path:
    """The SmolLM2-135M-Instruct directory built by `make setup`."""
    return models_dir() / EMBEDDED_MODEL_NAME


def main_python() -> Path:
    """Python of the main venv (agents, envs, LLaMA-Factory)."""
    return Path(os.environ.get("DENSEPOLICY_MAIN_PYTHON", PROJECT_ROOT / ".venv" / "bin" / "python"))


def serve_python() -> Path:
    """Python of the serving venv (vLLM)."""
    return Path(os.environ.get("DENSEPOLICY_SERVE_PYTHON", PROJECT_ROOT / ".venv-serve" / "bin" / "python"))


def resolve(path: str | os.PathLike) -> Path:
    """Resolve a config path relative to the project root (absolute paths are kept)."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else PROJECT_ROOT / p


def shown(path: str | os.PathLike) -> str:
    """A path as reports print it: relative to the project root when inside it (no user or machine names)."""
    p = Path(str(path))
    try:
        return str(p.resolve().relative_to(PROJECT_ROOT.resolve())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


def vllm_lock_file() -> Path:
    """Machine-wide lock that tests and benchmarks hold while they run a vLLM-CPU server
    ($DENSEPOLICY_VLLM_LOCK, default <tmp>/densepolicy-vllm.lock): two servers on 2 cores starve each other."""
    return Path(os.environ.get("DENSEPOLICY_VLLM_LOCK", Path(tempfile.gettempdir()) / "densepolicy-vllm.lock"))
