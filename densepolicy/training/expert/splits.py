"""Which expert tasks are allowed: never one whose content appears in an evaluation split.

Content keys (ids alone are not enough: MATH ids are row indices of different files):
gsm8k/math -> the question text with whitespace normalised; alfworld -> the game folder
`<task-dir>/<trial>`; babyai -> `level:seed`.
"""
from __future__ import annotations

from typing import Any

from envs import load_env

EVALUATION_SPLITS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("test",),
    "math": ("test", "test5000"),  # test5000: only its MATH-500 rows are evaluation tasks
    "alfworld": ("valid_seen", "valid_unseen"),
    "babyai": ("test", "valid"),
}
TRAIN_SPLIT = {"gsm8k": "train", "math": "train", "alfworld": "train", "babyai": "train"}


def _text_key(text: str) -> str:
    return " ".join(str(text).split())


def task_key(env: Any, task_id: str) -> str:
    """The content key of `task_id` in `env` (see the module docstring)."""
    if env.name in ("gsm8k", "math"):
        row = env.rows[int(task_id)]
        return _text_key(row["question"] if env.name == "gsm8k" else row["problem"])
    return str(task_id).strip("/")


def evaluation_keys(env_name: str, data_dir: str | None = None) -> set[str]:
    """Content keys of every evaluation task of `env_name`."""
    keys: set[str] = set()
    for split in EVALUATION_SPLITS[env_name]:
        env = load_env(env_name, split=split, **({"data_dir": data_dir} if data_dir else {}))
        try:
            ids = env.task_ids()
            if env_name == "math" and split == "test5000":
                ids = [i for i in ids if env.rows[int(i)].get("math500_unique_id") is not None]
            keys.update(task_key(env, i) for i in ids)
        finally:
            env.close()
    return keys
