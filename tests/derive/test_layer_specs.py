"""Every built-in layer has a test spec, tests/layers/<layer>.py, found by the layer's name, and
every spec is of a built-in layer (see tests/layers/__init__.py for what a spec holds)."""

from __future__ import annotations

import pytest

from symgrad import derive
from tests import layers


def test_every_builtin_layer_has_a_test_spec():
    missing = layers.missing()
    files = ", ".join(f"tests/layers/{n}.py" for n in missing)
    assert not missing, (f"no test spec for {', '.join(missing)}: add {files} (cases, forward, RIGHT, "
                         f"WRONG; tests/layers/softmax.py is one)")


def test_every_test_spec_is_of_a_builtin_layer():
    unknown = layers.unknown()
    assert not unknown, (f"tests/layers/ has specs of no built-in layer: {', '.join(unknown)} (name the "
                         f"file after its layer, or prefix a helper module with _)")


def test_a_missing_spec_is_a_key_error_that_names_the_file_to_add(monkeypatch):
    monkeypatch.setattr(layers, "names", lambda: [n for n in derive.layers() if n != "softmax"])
    with pytest.raises(KeyError, match=r"add tests/layers/softmax\.py"):
        layers.spec("softmax")
    assert layers.missing() == ["softmax"] and "softmax" not in layers.specified()


def test_a_configured_layer_uses_the_spec_of_its_layer():
    assert layers.spec("conv2d_s2_p1") is layers.spec("conv2d")
    assert layers.spec("max_pool2d_k3_s1") is layers.spec("max_pool2d")
    with pytest.raises(KeyError):
        layers.cases("conv2d_s2_p1")  # the inputs are for the default configuration


@pytest.mark.parametrize("name", layers.specified())
def test_spec_inputs_name_the_layers_arguments_and_its_torch_forward_its_outputs(name):
    torch = pytest.importorskip("torch")
    d = derive.layer(name)
    args = {a.name for a in d.arguments if a.role != "const"}
    for label, case in layers.cases(name):
        assert set(case) == args, f"tests/layers/{name}.py case '{label}' gives {sorted(case)}, {name} takes {sorted(args)}"
    _, case = layers.cases(name)[0]
    outs = layers.forward(name, {k: torch.as_tensor(v) for k, v in case.items()})
    assert set(outs) == {o.name for o in d.outputs}, f"tests/layers/{name}.py forward gives {sorted(outs)}"
