"""The two gradient oracles every layer test uses: float64 central finite differences and
torch.autograd. Failures name the layer, the argument, the element and both values."""

from __future__ import annotations

import numpy as np

from symgrad.derive import finite_differences


def central_differences(loss, args: dict, name: str, eps: float = 1e-6) -> np.ndarray:
    """d loss / d args[name] by float64 central differences, element by element."""
    return finite_differences.elementwise(lambda x: loss({**args, name: x}), args[name], eps)


def upstream_for(d, args, rng) -> dict:
    """A random upstream gradient for each of `d`'s outputs at `args` (shapes from derive's
    reference forward)."""
    from symgrad.derive import reference

    outs = reference.forward(d, args)
    return {d.upstream(o.name): rng.standard_normal(np.shape(outs[o.name])) for o in d.outputs}


def reference_loss(d, ups):
    """L(args) = sum over outputs of ups * output, by derive's reference forward: what central
    differences of a layer's VJP differentiate."""
    from symgrad.derive import reference

    def loss(a):
        outs = reference.forward(d, a)
        return sum(float(np.sum(ups[d.upstream(o.name)] * outs[o.name])) for o in d.outputs)
    return loss


def assert_close(layer: str, arg: str, got, want, rtol: float, what: str):
    """max |got - want| <= rtol * max(1, max |want|), else a message naming the worst element."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{layer}: d{arg} has shape {got.shape}, {what} has {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    err = np.abs(got - want)
    if err.size and err.max() > rtol * scale:
        ix = np.unravel_index(int(np.argmax(err)), err.shape)
        raise AssertionError(f"{layer}: d{arg}{list(ix)} = {got[ix]!r} but {what} gives {want[ix]!r} "
                             f"(|diff| {err[ix]:.3e} > {rtol:.0e} * {scale:.3g})")


def torch_or_skip():
    import pytest

    return pytest.importorskip("torch")
