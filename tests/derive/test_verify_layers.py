"""Hand-derived gradients of every built-in layer are accepted by `derive.verify`; plausible
mistakes are rejected with a counterexample.

The gradients are derived by hand, as NumPy functions, from the math alone, independently of
derive/ (that is the point): each layer's are `RIGHT` and `WRONG` in its spec,
tests/layers/<layer>.py, lists of (wrt, function, what it is).
"""

from __future__ import annotations

import importlib
from unittest import mock

import numpy as np
import pytest

from symgrad import derive
from symgrad.derive.verify import verify
from tests.layers import spec, specified

LAYERS = specified()
RIGHT_CASES = [pytest.param(name, wrt, fn, id=f"{name}-d{wrt}-{fn.__name__}")
               for name in LAYERS for wrt, fn, _ in getattr(spec(name), "RIGHT", [])]
WRONG_CASES = [pytest.param(name, wrt, fn, what, id=f"{name}-d{wrt}-{fn.__name__}")
               for name in LAYERS for wrt, fn, what in getattr(spec(name), "WRONG", [])]


def _verify(name, wrt, fn):
    s = spec(name)
    trials = getattr(s, "VERIFY_TRIALS", 3)
    shapes = getattr(s, "VERIFY_SHAPES", None)
    if shapes is None:
        return verify(name, wrt, fn, trials=trials, seed=1)
    # verify's shrinker tries every dim at 1 and 2, which leaves a window larger than its input
    # (no output position: a ValueError inside verify); the counterexample is then the failing case
    with mock.patch.object(importlib.import_module("symgrad.derive.verify_shrink"), "SHRINK_BUDGET", 0):
        return verify(name, wrt, fn, trials=trials, seed=1, shapes=shapes)


@pytest.mark.parametrize("name", LAYERS)
def test_every_builtin_layer_has_a_hand_derivation_and_two_mistakes(name):
    s = spec(name)
    assert getattr(s, "RIGHT", None), f"layer '{name}' has no hand-derived gradient in tests/layers/{name}.py (RIGHT) yet"
    assert len(getattr(s, "WRONG", [])) >= 2, \
        f"layer '{name}' needs at least two plausible mistakes in tests/layers/{name}.py (WRONG)"


@pytest.mark.parametrize("name", LAYERS)
def test_hand_derivations_cover_every_differentiable_argument(name):
    d = derive.layer(name)
    want = {a.name for a in d.arguments if a.differentiable}
    have = {wrt for wrt, _, _ in getattr(spec(name), "RIGHT", [])}
    assert want <= have, f"layer '{name}': no hand derivation for d{sorted(want - have)}"


@pytest.mark.parametrize("name, wrt, fn", RIGHT_CASES)
def test_hand_derivation_is_accepted(name, wrt, fn):
    report = _verify(name, wrt, fn)
    assert report.verdict == "matches", str(report)
    assert report.max_rel_error < 1e-7, str(report)


@pytest.mark.parametrize("name, wrt, fn, what", WRONG_CASES)
def test_plausible_mistake_is_rejected_with_a_counterexample(name, wrt, fn, what):
    report = _verify(name, wrt, fn)
    assert report.verdict == "wrong", f"{what}: " + str(report)
    ce = report.counterexample
    assert ce is not None, str(report)
    assert abs(ce.expected_value - ce.got_value) > 0
    assert np.asarray(ce.got).shape == np.asarray(ce.expected).shape
    text = str(report)
    assert "counterexample" in text and f"d{wrt}[" in text
