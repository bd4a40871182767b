"""Layers that exist only here, defined by their forward expression alone, get correct gradients:
nothing about a gradient is written anywhere."""

import numpy as np
import pytest
import sympy as sp

from symgrad import derive
from symgrad.derive import reference
from tests.defined_layers import bilinear, rmsnorm, swish
from tests.gradcheck import assert_close, central_differences, torch_or_skip


rng = np.random.default_rng(3)
LAYERS = {
    "swish": (swish, {"x": rng.standard_normal((3, 4))},
              lambda t: {"y": t["x"] * __import__("torch").sigmoid(t["x"])}),
    "bilinear": (bilinear, {"x": rng.standard_normal((2, 3)), "y": rng.standard_normal((2, 4)),
                            "A": rng.standard_normal((3, 4))},
                 lambda t: {"f": ((t["x"] @ t["A"]) * t["y"]).sum(-1)}),
    "rmsnorm": (rmsnorm, {"x": rng.standard_normal((3, 5)), "w": rng.standard_normal(5)},
                lambda t: {"y": t["x"] * __import__("torch").rsqrt((t["x"] ** 2).mean(-1, keepdim=True) + 1e-6) * t["w"]}),
}


@pytest.mark.parametrize("name", LAYERS)
def test_defined_layer_vjp_matches_central_differences_and_torch(name):
    build, args, torch_fwd = LAYERS[name]
    d = derive.define(name, build)
    outs = reference.forward(d, args)
    ups = {d.upstream(o.name): rng.standard_normal(np.shape(outs[o.name])) for o in d.outputs}
    got = reference.vjp(d, ups, args)
    assert set(got) == set(args)

    def loss(a):
        f = reference.forward(d, a)
        return sum(float(np.sum(ups[d.upstream(o.name)] * f[o.name])) for o in d.outputs)

    for arg, value in got.items():
        assert_close(name, arg, value, central_differences(loss, args, arg), 1e-6, "central differences")
    torch = torch_or_skip()
    t = {k: torch.tensor(v, requires_grad=True) for k, v in args.items()}
    res = torch_fwd(t)
    sum((torch.as_tensor(ups[d.upstream(o)]) * y).sum() for o, y in res.items()).backward()
    for arg, value in got.items():
        assert_close(name, arg, value, t[arg].grad.numpy(), 1e-10, "torch.autograd")


def test_defined_layer_gradient_reads_only_arguments_saved_bindings_and_upstream():
    d = derive.define("rmsnorm", rmsnorm)
    names = {str(ix.base.label) for e in d.grads.values() for ix in e.atoms(sp.Indexed)}
    assert names <= {"x", "w", "r", "g"}, names
    assert "r" in names  # the saved rstd-like binding is reused, not recomputed
    assert not any(p.base.has(sp.Sum) for p in d.grads["x"].atoms(sp.Pow)), d.grads["x"]
