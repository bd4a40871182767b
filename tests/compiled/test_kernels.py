"""compiled/: kernels printed from derive's expressions equal derive's float64 reference.

Every built-in layer derive provides is compiled (a layer that derives but does not compile
fails here), plus three layers that exist only in these tests. float64 kernels must match the
reference evaluator within 1e-12 relative; float32 kernels match float64 within 2e-5 on
well-scaled inputs. Errors are relative to the largest reference value, floored at 1 (the
scale of the inputs), so a gradient that is mathematically 0 is compared absolutely.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from symgrad import compiled
from symgrad import derive
from symgrad.derive import reference
from tests.defined_layers import BUILDERS, defined
from tests.layers import cases as layer_cases

ILL_CONDITIONED = ("1e3", "near-constant", "large")  # skipped for float32-vs-float64 only


def _derivable():
    out = []
    for name in derive.layers():
        try:
            derive.layer(name)
        except Exception:  # derive does not provide it (yet): nothing for compiled/ to test
            continue
        out.append(name)
    return out


BUILTINS = _derivable()


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))


def _upstream(d, outs, rng):
    return {d.upstream(o.name): (rng.standard_normal(np.shape(outs[o.name])) if np.ndim(outs[o.name])
                                 else 0.7) for o in d.outputs}


def _cast(args, dtype):
    return {k: (v if np.asarray(v).dtype.kind in "iu" else np.asarray(v, dtype)) for k, v in args.items()}


def _random_cases(d, rng):
    """Random shapes for a layer with no hand-made cases: sizes 1 and 2..5 for every dim."""
    out = []
    for label, size in (("ones", lambda: 1), ("random", lambda: int(rng.integers(2, 6)))):
        dims = {dim: size() for dim in d.graph.dims_}
        args = {}
        for a in d.arguments:
            if a.role == "const":
                continue
            shape = tuple(int(s.subs(dims)) for s in a.shape)
            args[a.name] = rng.standard_normal(shape)
        out.append((label, args))
    return out


def check_layer(d, cases, n_cases=3):
    rng = np.random.default_rng(0)
    k64, k32 = compiled.kernels(d, "float64"), compiled.kernels(d, "float32")
    for label, args in cases[:n_cases]:
        args = _cast(args, np.float64)
        ref = reference.forward(d, args)
        got = k64.forward(**args)
        assert set(got) == {t.name for t in d.saved}, f"{d.name}: forward returns {set(got)}"
        for b, v in got.items():
            err = _rel(v, ref[b])
            assert err <= 1e-12, f"{d.name} [{label}] float64 forward '{b}': rel err {err:.3g}"
        ups = _upstream(d, ref, rng)
        want = reference.vjp(d, ups, args)
        grads = k64.backward(**ups, **args, **got)
        assert set(grads) == set(want), f"{d.name}: backward returns {set(grads)}, want {set(want)}"
        for a in want:
            err = _rel(grads[a], want[a])
            assert err <= 1e-12, f"{d.name} [{label}] float64 grad '{a}': rel err {err:.3g}"
        if any(s in label for s in ILL_CONDITIONED):
            continue
        a32 = _cast(args, np.float32)
        f32 = k32.forward(**a32)
        for b, v in f32.items():
            assert np.asarray(v).dtype == np.float32 or np.ndim(v) == 0
            err = _rel(v, got[b])
            assert err <= 2e-5, f"{d.name} [{label}] float32 forward '{b}': rel err {err:.3g}"
        u32 = {u: (np.float32(v) if np.ndim(v) == 0 else v.astype(np.float32)) for u, v in ups.items()}
        g32 = k32.backward(**u32, **a32, **f32)
        for a in want:
            err = _rel(g32[a], grads[a])
            assert err <= 2e-5, f"{d.name} [{label}] float32 grad '{a}': rel err {err:.3g}"


def test_derive_provides_layers_to_compile():
    assert "linear" in BUILTINS and "softmax" in BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_layer_kernels_match_reference_in_float64_and_float32(name):
    d = derive.layer(name)
    try:
        cases = layer_cases(name)
    except KeyError:
        cases = _random_cases(d, np.random.default_rng(1))
    check_layer(d, cases, n_cases=2 if name in ("multihead_attention", "lstm_cell") else 3)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_defined_layer_kernels_match_reference_at_random_shapes(name):
    d = defined(name)
    check_layer(d, _random_cases(d, np.random.default_rng(2)))


def test_generated_file_is_named_after_the_layer_and_carries_its_formulas():
    k = compiled.kernels("softmax", "float32")
    assert "softmax_float32_" in k.source_path
    text = open(k.source_path).read()
    assert text.startswith("# Generated from derive/softmax")
    assert "Do not edit" in text.splitlines()[0]
    for step in derive.layer("softmax").steps_of("simplified"):
        assert step.text in text
    assert "fastmath=FAST" in text and "'nnan'" not in text.split("FAST =")[1].splitlines()[0]


def test_forward_writes_into_preallocated_outputs():
    k = compiled.kernels("softmax", "float32")
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    s = np.empty_like(x)
    assert k.forward(x=x, out={"s": s})["s"] is s
    dx = np.empty_like(x)
    assert k.backward(g=x, s=s, out={"x": dx})["x"] is dx


def test_embedding_gradient_is_a_scatter_add_not_a_dense_loop():
    if "embedding" not in BUILTINS:
        pytest.skip("derive provides no embedding")
    src = compiled.kernels("embedding", "float64").source
    backward = src.split("_backward(")[1]
    assert "+=" in backward and " if " not in backward  # no delta test inside a V*N*C loop


def test_attention_backward_shares_dS_between_dq_and_dk():
    if "attention" not in BUILTINS:
        pytest.skip("derive provides no attention")
    backward = compiled.kernels("attention", "float64").source.split("_backward(")[1]
    # the parallel and the serial copy of a batched loop print the same products
    products = {line.strip() for line in backward.splitlines() if re.match(r"\s*gemm\(", line)}
    assert len(products) == 4, products  # dP, dq, dk, dv: dS is computed once


def test_elementwise_update_may_write_in_place():
    from tests.defined_layers import sgd_step
    k = compiled.kernels(derive.define("t_sgd", sgd_step), "float64")
    p = np.linspace(-1, 1, 7)
    grad = np.ones(7)
    want = p - 0.1 * (grad + 0.01 * p)
    got = k.forward(p=p, grad=grad, out={"p_new": p})
    assert got["p_new"] is p
    np.testing.assert_allclose(p, want, rtol=1e-15)


def test_aliasing_a_non_elementwise_input_is_refused():
    k = compiled.kernels("softmax", "float64")
    x = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(compiled.KernelError, match="softmax.forward.*overlaps argument 'x'"):
        k.forward(x=x, out={"s": x})
