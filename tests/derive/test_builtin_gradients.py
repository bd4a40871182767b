"""Every built-in layer's derived VJP against float64 central differences and torch.autograd."""

import numpy as np
import pytest

from symgrad import derive
from symgrad.derive import reference
from tests.gradcheck import assert_close, central_differences, reference_loss, torch_or_skip, upstream_for
from tests.layers import cases, forward, specified

ALL = [(name, label, args) for name in specified() for label, args in cases(name)]
IDS = [f"{n}-{label}" for n, label, _ in ALL]


def test_every_layer_spec_has_test_inputs():
    for name in specified():
        assert cases(name), f"tests/layers/{name}.py: cases() gives no inputs"


@pytest.mark.parametrize("name,label,args", ALL, ids=IDS)
def test_vjp_matches_central_differences(name, label, args):
    d = derive.layer(name)
    ups = upstream_for(d, args, np.random.default_rng(1))
    got = reference.vjp(d, ups, args)
    assert set(got) == {a.name for a in d.arguments if a.differentiable}
    for arg, value in got.items():
        want = central_differences(reference_loss(d, ups), args, arg)
        assert_close(name, arg, value, want, 1e-6, f"central differences ({label})")


@pytest.mark.parametrize("name,label,args", ALL, ids=IDS)
def test_vjp_matches_torch_autograd(name, label, args):
    torch = torch_or_skip()
    d = derive.layer(name)
    ups = upstream_for(d, args, np.random.default_rng(1))
    got = reference.vjp(d, ups, args)
    t = {k: torch.tensor(v, dtype=torch.int64 if d.graph.tensor(k).integer else torch.float64,
                         requires_grad=not d.graph.tensor(k).integer) for k, v in args.items()}
    outs = forward(name, t)
    total = sum((torch.as_tensor(ups[d.upstream(o)]) * y).sum() for o, y in outs.items())
    total.backward()
    for arg, value in got.items():
        assert_close(name, arg, value, t[arg].grad.numpy(), 1e-10, f"torch.autograd ({label})")
