"""Named bundles of settings: `preset=paper` selects every behaviour the original code really had
where our default fixes it (docs/deviations.md, "preset=paper" table).

Layering (later wins): the YAML files -> the preset's values -> keys given on the command line. So
`preset=paper update_rows=fixed` is the original except for the stats update; the preset's values that
an explicit key replaces are logged. `preset=none` (the default) changes nothing.

    data = with_preset("sampler", yaml_values, command_line_values)
"""
from __future__ import annotations

import logging
from typing import Any

from densepolicy.config import ConfigError, flat_keys, merge_dicts

log = logging.getLogger(__name__)

PRESET_NAMES = ("none", "paper")

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "sampler": {
        "none": {},
        "paper": {
            "visit_counting": "faithful",          # +1 new, +2 per revisit, +1 per selection (docs/original.md §3.4-3.5)
            "select_leaves": True,                 # selection may pick nodes that cannot expand (§10.8)
            "dedup": "faithful",                   # only successful runs block their extensions (§3.6)
            "update_rows": "faithful",             # last len(queue) rows: the task fails after a duplicate
            "overflow_counts_as_failure": True,    # a context-overflow run is a failed leaf (§3.2)
            "prompt_style": "original",            # the original's instruction, tool list and observations (§2.2)
            "stop_if_uniform_after": 0,            # every tree runs to its caps, however uniform its runs
            "arithmetic": "faithful",              # np.mean of the children in label order, exact comparisons
            "incontext_draw": "first_step",        # a fresh in-context example draw per first-step node (§2.1, §3.2)
        },
    },
    "postprocess": {
        "none": {},
        # 2k-1 visits in the pair rule; np.mean node values and exact comparisons, bit for bit (§6.1)
        "paper": {"pairs": {"visit_counting": "faithful", "arithmetic": "faithful"}},
    },
}


def preset_values(stage: str, name: str) -> dict[str, Any]:
    """The settings of preset `name` for `stage` ("sampler" or "postprocess")."""
    if name not in PRESETS[stage]:
        raise ConfigError(f"key 'preset' must be one of {', '.join(PRESET_NAMES)}, got {name!r}")
    return PRESETS[stage][name]


def with_preset(stage: str, data: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """`data` (values from the YAML files) with the preset laid over it, then the `explicit`
    (command-line) values over both. The preset is named by `explicit` or else by `data`."""
    name = explicit.get("preset", data.get("preset", "none")) or "none"
    values = preset_values(stage, str(name))
    given = flat_keys(explicit)
    replaced = {k: v for k, v in flat_keys(values).items() if k in given and given[k] != v}
    if replaced:
        log.info("preset=%s: the explicit %s replace the preset's %s", name,
                 ", ".join(f"{k}={given[k]!r}" for k in replaced), ", ".join(f"{k}={v!r}" for k, v in replaced.items()))
    return merge_dicts(merge_dicts(data, values), explicit)
