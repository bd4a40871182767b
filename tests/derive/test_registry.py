"""The built-in layer registry: every module of derive/builtin is found without a hand-kept list,
and a layer's `uses` (the derivations it reuses, which the docs link) come from the helpers its
definition really calls."""

import re
from pathlib import Path

from symgrad import derive
from symgrad.derive import registry


def test_every_layer_defined_in_derive_builtin_is_registered():
    src = Path(registry.__file__).parent / "builtin"
    defined = set()
    for f in src.glob("*.py"):
        for m in re.finditer(r"^@layer(?:\(.*\))?\ndef (\w+)\(", f.read_text(), re.M):
            defined.add(m.group(1).rstrip("_"))
    assert defined and defined == set(derive.layers())


def test_uses_are_recorded_by_the_shared_helpers_a_definition_calls():
    uses = {n: derive.layer(n).graph.uses for n in derive.layers()}
    assert uses["attention"] == ["softmax"]
    assert uses["multihead_attention"] == ["attention", "softmax"]  # no linear: its projections are inline
    assert uses["cross_entropy"] == ["log_softmax"]
    assert uses["softmax"] == [] and uses["log_softmax"] == []  # a layer does not reuse itself


def test_resolve_takes_a_derivation_or_a_name_and_refuses_anything_else():
    import pytest

    d = derive.layer("relu")
    assert derive.resolve(d) is d and derive.resolve("relu") is d
    with pytest.raises(derive.DeriveError, match="expected a layer name or a Derivation, got int"):
        derive.resolve(3)
