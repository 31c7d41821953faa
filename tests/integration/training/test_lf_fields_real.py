"""The cached schema against LLaMA-Factory's own argument dataclasses: every field has a stand-in, and every
stand-in converts and refuses values as the real type does (so a cached `TreeDPO/train.py` check is the check)."""
from __future__ import annotations

import enum
import json
import typing

import pytest

from densepolicy.training import lf_fields
from tests.harness.coerce_probe import PROBE_VALUES, coerce_outcome

pytestmark = pytest.mark.integration


def test_every_llamafactory_field_is_cached_with_the_same_behaviour():
    real = lf_fields.fields_from_dataclasses()  # imports llamafactory.hparams (seconds)
    assert len(real) > 300 and "learning_rate" in real and "pref_ftx" in real
    encoded = json.loads(json.dumps(lf_fields.encode_fields(real)))
    stand_ins = {key: lf_fields.decode_type(spec) for key, spec in encoded.items()}
    choices: set[str] = set()
    for tp in real.values():
        for arg in typing.get_args(tp) or (tp,):
            if isinstance(arg, type) and issubclass(arg, enum.Enum):
                choices.update(str(m.value) for m in arg)
            elif typing.get_origin(arg) is typing.Literal:
                choices.update(str(v) for v in typing.get_args(arg))
    assert len(choices) > 20  # strategies, schedulers, optimizers, stages, ...
    values = PROBE_VALUES + sorted(choices)  # every enum and Literal choice LLaMA-Factory declares, as text
    for key in real:
        for value in values:
            assert coerce_outcome(stand_ins, key, value) == coerce_outcome(real, key, value), (key, value, real[key])
