"""conv1d, conv2d, max_pool2d, avg_pool2d and flatten: their derived VJPs (derive's float64
reference evaluator of the derived expressions) against float64 central differences and
torch.autograd, in every configuration the issue names: stride 1 and 2, padding 0 and 1,
dilation 1 and 2, at random small shapes including batch 1, one channel and kernel 1; max
pooling with ties on purpose. The compiled kernels of these layers are tested in
tests/compiled/test_conv_kernels.py.

Every layer here is linear in each argument, or piecewise linear (max pooling), so central
differences with a step of 1e-3 are exact up to rounding: the tolerance is 1e-10 for both oracles.
Max pooling is compared with differences only where no two elements of a window are within 2e-3
of each other (at a tie the max has no derivative; there torch is the oracle of the tie rule).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from symgrad import derive
from symgrad.derive import reference
from tests import layers
from tests.gradcheck import assert_close, central_differences, reference_loss, upstream_for

STEP = 1e-3
TOL = 1e-10


def _conv_shapes(rng, nd, stride, padding, dilation, small=False):
    """Random (x, w, b) shapes with at least one output position: N, C in 1..2, O in 1..3,
    kernel 1..3 per axis (all 1 with `small`: batch 1, one channel, kernel 1)."""
    while True:
        N, C, O = (1, 1, 2) if small else (int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 4)))
        K = [1] * nd if small else [int(rng.integers(1, 4)) for _ in range(nd)]
        S = [int(rng.integers(3, 8 if nd == 1 else 6)) for _ in range(nd)]
        if all(s + 2 * padding - dilation * (k - 1) - 1 >= 0 for s, k in zip(S, K)):
            return {"x": (N, C, *S), "w": (O, C, *K), "b": (O,)}


def _conv_cases():
    out = []
    rng = np.random.default_rng(15)
    for nd, (stride, padding, dilation) in itertools.product((1, 2), itertools.product((1, 2), (0, 1), (1, 2))):
        name = derive.registry.variant(f"conv{nd}d", stride=stride, padding=padding, dilation=dilation)
        out.append(pytest.param(name, _conv_shapes(rng, nd, stride, padding, dilation), id=name))
    for nd in (1, 2):
        out.append(pytest.param(f"conv{nd}d_s2_p1", _conv_shapes(rng, nd, 2, 1, 1, small=True),
                                id=f"conv{nd}d_s2_p1-batch1-channel1-kernel1"))
    return out


POOLS = ["max_pool2d", "max_pool2d_k3_s1", "max_pool2d_k3", "max_pool2d_k1_s1", "avg_pool2d",
         "avg_pool2d_k3_s1"]


def _torch_grads(name, args, ups, d):
    torch = pytest.importorskip("torch")
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in args.items()}
    outs = layers.forward(name, t)
    sum((torch.as_tensor(ups[d.upstream(o)]) * y).sum() for o, y in outs.items()).backward()
    return {k: v.grad.numpy() for k, v in t.items()}, {k: v.detach().numpy() for k, v in outs.items()}


def _check(name, args, differences=True, seed=0):
    """The derived VJP of every argument against torch.autograd (and central differences)."""
    d = derive.layer(name)
    rng = np.random.default_rng(seed)
    ups = upstream_for(d, args, rng)
    got = reference.vjp(d, ups, args)
    assert set(got) == set(args), f"{name}: gradients of {sorted(got)}, arguments {sorted(args)}"
    want, outs = _torch_grads(name, args, ups, d)
    for o, y in outs.items():
        assert_close(name, o, reference.forward(d, args)[o], y, TOL, "torch's forward")
    for arg, value in got.items():
        assert_close(name, arg, value, want[arg], TOL, "torch.autograd")
        if differences:
            assert_close(name, arg, value, central_differences(reference_loss(d, ups), args, arg, STEP), TOL,
                         "central differences")


@pytest.mark.parametrize("name, shapes", _conv_cases())
def test_conv_vjps_match_torch_and_central_differences_in_every_configuration(name, shapes):
    rng = np.random.default_rng(len(name))
    _check(name, {k: rng.standard_normal(s) for k, s in shapes.items()})


def _distinct(rng, shape):
    """Values at least 0.01 apart: no window holds two within a difference step of each other."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.01 + rng.standard_normal()).reshape(shape)


@pytest.mark.parametrize("name", POOLS)
@pytest.mark.parametrize("shape", [(2, 2, 5, 4), (1, 1, 3, 3)], ids=["N2-C2-5x4", "batch1-channel1-3x3"])
def test_pool_vjps_match_torch_and_central_differences(name, shape):
    _check(name, {"x": _distinct(np.random.default_rng(sum(shape)), shape)})


@pytest.mark.parametrize("name", ["max_pool2d", "max_pool2d_k3_s1", "max_pool2d_k3"])
def test_max_pool_routes_each_windows_gradient_to_its_first_maximum_as_torch_does(name):
    """Ties on purpose: small integers, so most windows hold their max more than once (and
    overlapping windows share elements). The gradient goes to the first maximal element in
    row-major order: torch's rule, matched exactly."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (2, 2, 7, 6)).astype(np.float64)
    x[0, 0] = 1.0  # a channel that is one big tie
    _check(name, {"x": x}, differences=False)


def test_max_pool_tie_goes_to_the_first_element_in_scan_order():
    d = derive.layer("max_pool2d_k3_s1")
    x = np.array([[1.0, 3.0, 3.0], [3.0, 2.0, 3.0], [0.0, 3.0, 1.0]])[None, None]
    dx = reference.vjp(d, {d.upstream("y"): np.ones((1, 1, 1, 1))}, {"x": x})["x"]
    want = np.zeros_like(x)
    want[0, 0, 0, 1] = 1.0  # row 0, column 1: the first 3 in row-major order
    np.testing.assert_array_equal(dx, want)


def test_flatten_vjp_matches_torch_and_central_differences():
    rng = np.random.default_rng(4)
    for shape in ((2, 3, 2, 4), (1, 1, 1, 1)):
        _check("flatten", {"x": rng.standard_normal(shape)})
