"""Issue #11, item 3: a definition that derives also runs. A saved binding that ignores one of its
indices, a gradient that would read an unsaved binding, a saved definition SymPy cannot solve:
each derives a backward that compiles and matches finite differences. What cannot be made to
run is refused before printing (derivation.check_backward) as a DeriveError naming the term."""

import dataclasses

import numpy as np
import pytest
import sympy as sp

from symgrad import derive
from symgrad.derive import DeriveError
from tests.derive.kernel_check import assert_kernels_match_finite_differences


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))


def _reads(d):
    return {str(ix.base.label) for _, _, e in d.program for ix in e.atoms(sp.Indexed)}


def _free_indices(d):
    """Symbols of the program that are neither its equations' indices, nor bound by a sum, nor
    dims, nor scalars (the dangling w_i_ of h[w_i_, j])."""
    allowed = {str(x) for x in d.graph.dims_} | {t.name for t in d.graph.tensors() if not t.shape}
    out = set()
    for _, idx, e in d.program:
        labels = {ix.base.label for ix in e.atoms(sp.Indexed)}
        bound = {lim[0] for s in e.atoms(sp.Sum) for lim in s.limits}
        out |= {s for s in e.atoms(sp.Symbol) - labels - bound - set(idx) if s.name not in allowed}
    return out


def broadcast_saved(G):
    """h[i,j] = exp(w[j]) is saved but does not depend on i; y = x * h."""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    w = G.param("w", (C,))
    i, j = G.indices(i=N, j=C)
    h = G.bind("h", (i, j), sp.exp(w[j]), save=True)
    G.output(G.bind("y", (i, j), x[i, j] * h[i, j]))


def unsaved_quotient(G):
    """t0 = cos(x)/(x^2 + 1), unsaved; y = t0 saved."""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    i, j = G.indices(i=N, j=C)
    t0 = G.bind("t0", (i, j), sp.cos(x[i, j]) / (x[i, j] ** 2 + 1))
    G.output(G.bind("y", (i, j), t0[i, j]))


def unsolvable_saved(G):
    """s = t + sin(t) is saved, t = x w is not: solving s for t has no closed form."""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    w = G.param("w", (C,))
    i, j = G.indices(i=N, j=C)
    t = G.bind("t", (i, j), x[i, j] * w[j])
    s = G.bind("s", (i, j), t[i, j] + sp.sin(t[i, j]), save=True)
    G.output(G.bind("y", (i, j), s[i, j] * x[i, j]))


def test_saved_binding_that_ignores_one_of_its_indices_derives_a_gradient_without_a_dangling_index():
    d = derive.define("broadcast_saved", broadcast_saved)
    assert not _free_indices(d), d.program  # was dw = h[w_i_, j] * sum_k g[k, j] x[k, j]
    rng = np.random.default_rng(0)
    assert_kernels_match_finite_differences(d, {"x": rng.standard_normal((3, 4)),
                                                "w": rng.standard_normal(4)}, rng)


def test_gradient_never_reads_an_unsaved_binding_the_forward_does_not_return():
    d = derive.define("unsaved_quotient", unsaved_quotient)
    assert "t0" not in _reads(d), d.program  # was KernelError: missing argument 't0'
    rng = np.random.default_rng(1)
    assert_kernels_match_finite_differences(d, {"x": rng.standard_normal((3, 4))}, rng)


def test_saved_definition_sympy_cannot_solve_is_folded_another_way_not_a_notimplementederror():
    d = derive.define("unsolvable_saved", unsolvable_saved)  # was NotImplementedError out of sp.solve
    rng = np.random.default_rng(2)
    assert_kernels_match_finite_differences(d, {"x": rng.standard_normal((3, 4)),
                                                "w": rng.standard_normal(4)}, rng)


def _with_program(d, name, expr):
    """d with the program entry `name` replaced by expr (a backward derive would never make)."""
    program = [(n, idx, expr if n == name else e) for n, idx, e in d.program]
    return dataclasses.replace(d, program=program)


def test_backward_reading_an_unsaved_binding_is_a_derive_error_naming_the_layer_and_the_term():
    d = derive.define("unsaved_quotient", unsaved_quotient)
    i, j = d.grad_indices["x"]
    bad = _with_program(d, "dx", sp.IndexedBase("t0", real=True)[i, j] * sp.IndexedBase("g", real=True)[i, j])
    with pytest.raises(DeriveError, match=r"^unsaved_quotient: the backward could not run: dx reads 't0', "
                                          r"a binding the forward pass does not save: dx\[i, j\] = "):
        derive.derivation.check_backward(bad)


def test_backward_with_a_dangling_index_is_a_derive_error_naming_the_layer_and_the_term():
    d = derive.define("broadcast_saved", broadcast_saved)
    (j,) = d.grad_indices["w"]
    dangling = sp.Wild("w_i_")
    bad = _with_program(d, "dw", sp.IndexedBase("h", real=True)[dangling, j])
    with pytest.raises(DeriveError, match=r"^broadcast_saved: the gradient dw uses the index w_i_\w*, which "
                                          r"no sum and no index of its own binds"):
        derive.derivation.check_backward(bad)
