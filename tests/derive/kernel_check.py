"""Gradients through the compiled float64 kernels, checked against central finite differences of
the compiled forward: the oracle for layers that exist only in these tests."""

from __future__ import annotations

import numpy as np

from tests.gradcheck import assert_close, central_differences


def random_args(d, dims: dict, rng) -> dict:
    """A float64 value for every array and scalar argument of derivation d."""
    out = {}
    for a in d.arguments:
        if a.role == "const":
            continue
        shape = tuple(int(s.subs(dims)) for s in a.shape)
        out[a.name] = rng.standard_normal(shape) if shape else float(rng.standard_normal())
    return out


def assert_kernels_match_finite_differences(d, args: dict, rng, rtol: float = 1e-6):
    """The compiled backward of d equals central differences of the compiled forward, for every
    differentiable argument (names the layer, argument and element on failure)."""
    from symgrad import compiled
    k = compiled.kernels(d, dtype="float64")
    outs = k.forward(**args)
    ups = {d.upstream(o.name): rng.standard_normal(np.shape(outs[o.name])) for o in d.outputs}

    def loss(a):
        f = k.forward(**a)
        return sum(float(np.sum(ups[d.upstream(o.name)] * f[o.name])) for o in d.outputs)

    saved = {t.name: outs[t.name] for t in d.saved}
    got = k.backward(**ups, **args, **saved)
    assert set(got) == {a.name for a in d.arguments if a.differentiable}, got.keys()
    for arg, value in got.items():
        assert_close(d.name, arg, value, central_differences(loss, args, arg), rtol,
                     "central differences of the compiled forward")
