"""Which expert tasks are allowed: never one whose content appears in an evaluation split.

Content keys (ids alone are not enough: MATH ids are row indices of different files):
gsm8k/math -> the question text (the env spec's `content_field`) with whitespace normalised; alfworld -> the game folder
`<task-dir>/<trial>`; babyai -> `level:seed`.
"""
from __future__ import annotations

from typing import Any

from envs import ENV_SPECS, env_spec, load_env


def _text_key(text: str) -> str:
    return " ".join(str(text).split())


def task_key(env: Any, task_id: str) -> str:
    """The content key of `task_id` in `env` (see the module docstring)."""
    spec = ENV_SPECS.get(env.name)
    if spec is not None and spec.content_field:
        return _text_key(env.rows[int(task_id)][spec.content_field])
    return str(task_id).strip("/")


def evaluation_keys(env_name: str, data_dir: str | None = None) -> set[str]:
    """Content keys of every evaluation task of `env_name`: the `evaluation_splits` of its spec, less the rows
    its `evaluation_row_filters` leave out (of MATH's `test5000`, only the MATH-500 rows are evaluation tasks)."""
    keys: set[str] = set()
    spec = env_spec(env_name)
    row_filters = dict(spec.evaluation_row_filters)
    for split in spec.evaluation_splits:
        env = load_env(env_name, split=split, **({"data_dir": data_dir} if data_dir else {}))
        try:
            ids = env.task_ids()
            if split in row_filters:
                ids = [i for i in ids if env.rows[int(i)].get(row_filters[split]) is not None]
            keys.update(task_key(env, i) for i in ids)
        finally:
            env.close()
    return keys
