"""The compiled kernels of convolution and pooling configurations against torch.autograd:
float64 within 1e-10, float32 within 2e-5 (relative to the largest value, floored at 1).

The default configurations (conv1d, conv2d, max_pool2d, avg_pool2d, flatten) are compiled in both
dtypes and checked against the reference by test_kernels.py. Here: the configurations whose
kernels take other paths - stride 2 with padding 1 and dilation 2 (the padding bracket, the floor
in the output size, and an input gradient whose delta no index solves: a test per tap), dilation
2 at stride 1 (the delta solved for the output position instead of the tap), overlapping 3x3
max-pool windows with ties. Each kernel takes seconds to compile, so only these few.
"""

from __future__ import annotations

import numpy as np
import pytest

from symgrad import compiled
from symgrad import derive
from tests import layers
from tests.gradcheck import assert_close

CASES = [  # (layer, shapes, dtype): a few, each compiles in seconds
    # conv2d_p1 in float64 is the CNN's (tests/models/test_cnn.py): one compile for both; stride and
    # dilation are in conv1d's kernels below (conv2d_s2_p1_d2 alone took 52 s to compile)
    ("conv2d_p1", {"x": (2, 2, 7, 6), "w": (3, 2, 3, 2), "b": (3,)}, "float64"),
    ("conv1d_s2_p1_d2", {"x": (2, 3, 8), "w": (2, 3, 3), "b": (2,)}, "float32"),
    ("conv1d_p1_d2", {"x": (2, 3, 7), "w": (2, 3, 3), "b": (2,)}, "float64"),
    ("max_pool2d_k3_s1", {"x": (2, 2, 5, 6)}, "float64"),
]
TOL = {"float64": 1e-10, "float32": 2e-5}


def _inputs(name, shapes, rng):
    if name.startswith("max_pool"):  # ties on purpose: small integers
        return {"x": rng.integers(0, 3, shapes["x"]).astype(np.float64)}
    return {k: rng.standard_normal(s) for k, s in shapes.items()}


def _torch(name, args, g):
    torch = pytest.importorskip("torch")
    t = {k: torch.tensor(v, requires_grad=True) for k, v in args.items()}
    y = layers.forward(name, t)["y"]
    (y * torch.as_tensor(g)).sum().backward()
    return y.detach().numpy(), {k: v.grad.numpy() for k, v in t.items()}


@pytest.mark.parametrize("name, shapes, dtype", [pytest.param(n, s, dt, id=f"{n}-{dt}") for n, s, dt in CASES])
def test_conv_and_pool_kernels_match_torch_autograd(name, shapes, dtype):
    rng = np.random.default_rng(7)
    args = _inputs(name, shapes, rng)
    d = derive.layer(name)
    k = compiled.kernels(d, dtype)
    cast = {a: v.astype(dtype) for a, v in args.items()}
    out = k.forward(**cast)
    g = rng.standard_normal(out["y"].shape)
    y, want = _torch(name, {a: v.astype(np.float64) for a, v in cast.items()}, g)
    assert_close(name, "y (forward)", out["y"], y, TOL[dtype], f"torch ({dtype})")
    grads = k.backward(**{d.upstream("y"): g.astype(dtype)}, **cast, **out)
    assert set(grads) == set(args)
    for a in args:
        assert grads[a].dtype == np.dtype(dtype)
        assert_close(name, a, grads[a], want[a], TOL[dtype], f"torch.autograd ({dtype} kernel)")


def test_a_padded_convolution_never_reads_past_the_end_of_its_input():
    """x is the first half of an array whose second half is NaN: a read past the end of x (a
    padded position taken for a real one) would make a value NaN. A padded position read as x's
    own would differ from torch, above."""
    rng = np.random.default_rng(1)
    big = np.full((2, 1, 7, 6), np.nan)
    big[0] = rng.standard_normal((1, 7, 6))
    x = big[:1]
    k = compiled.kernels(derive.layer("conv2d_p1"), "float64")
    w, b = rng.standard_normal((3, 1, 3, 2)), rng.standard_normal(3)
    out = k.forward(x=x, w=w, b=b)
    assert np.isfinite(out["y"]).all()
    grads = k.backward(g=np.ones_like(out["y"]), x=x, w=w, b=b, **out)
    assert all(np.isfinite(v).all() for v in grads.values())
