"""Where the environments find their files: the offline data directory and the cache for unpacked games.

The environments are a standalone layer (they import nothing from `densepolicy` or `agents`), so they
locate their files themselves, with the same defaults and environment variables as `densepolicy.paths`
(tests/unit/project/test_layering.py checks that both agree):

    data_dir()            # $DENSEPOLICY_DATA_DIR, else ../shared/data next to the checkout
    data_dir("my/data")   # relative to the checkout
    cache_dir()           # $DENSEPOLICY_CACHE_DIR, else .cache in the checkout
"""
from __future__ import annotations

import os
from pathlib import Path

CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
"""The checkout this package was imported from (the same folder as `densepolicy.paths.PROJECT_ROOT`)."""


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The offline data directory: `override`, else $DENSEPOLICY_DATA_DIR, else `../shared/data`."""
    raw = override or os.environ.get("DENSEPOLICY_DATA_DIR") or CHECKOUT_ROOT.parent / "shared" / "data"
    path = Path(raw)
    if not path.is_absolute():
        path = (CHECKOUT_ROOT / path).resolve()
    return path


def cache_dir() -> Path:
    """Git-ignored cache for unpacked data (ALFWorld games): $DENSEPOLICY_CACHE_DIR, else `.cache`."""
    return Path(os.environ.get("DENSEPOLICY_CACHE_DIR", CHECKOUT_ROOT / ".cache"))
