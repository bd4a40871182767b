"""Issue #11, item 6: derive.define has a time budget and reports progress. A deep elementwise
nesting, tanh(sin(e) e + exp(-e^2)) three deep, took 34 s and five deep over 300 s; it now derives
in seconds (fold.tidy and the delta elimination no longer distribute it into tens of thousands of
terms), and a definition over its budget is a DeriveError naming the binding it was at."""

import time

import numpy as np
import pytest
import sympy as sp

from symgrad import derive
from symgrad.derive import DeriveError, reference
from tests.gradcheck import assert_close, central_differences


def nested(depth):
    def build(G):
        N, C = G.dims("N C")
        x = G.input("x", (N, C))
        i, j = G.indices(i=N, j=C)
        e = x[i, j]
        for _ in range(depth):
            e = sp.tanh(sp.sin(e) * e + sp.exp(-e ** 2))
        G.output(G.bind("y", (i, j), e))
    return build


def two_bindings(G):
    """u = the depth-3 nesting of x, saved; y = u * x."""
    N, C = G.dims("N C")
    x = G.input("x", (N, C))
    i, j = G.indices(i=N, j=C)
    e = x[i, j]
    for _ in range(3):
        e = sp.tanh(sp.sin(e) * e + sp.exp(-e ** 2))
    u = G.bind("u", (i, j), e, save=True)
    G.output(G.bind("y", (i, j), u[i, j] * x[i, j]))


def test_deep_elementwise_nesting_derives_within_seconds_and_matches_finite_differences():
    t0 = time.perf_counter()
    d = derive.define("nested4", nested(4), budget=120)
    took = time.perf_counter() - t0
    assert took < 30, f"depth 4 took {took:.1f} s (1.5 s measured; depth 3 alone took 34 s before)"
    rng = np.random.default_rng(0)
    args, up = {"x": rng.standard_normal((2, 3))}, rng.standard_normal((2, 3))
    got = reference.vjp(d, {"g": up}, args)["x"]
    want = central_differences(lambda a: float(np.sum(up * reference.forward(d, a)["y"])), args, "x")
    assert_close("nested4", "x", got, want, 1e-7, "central differences")


def test_derivation_over_its_budget_is_a_derive_error_naming_the_binding_it_was_at():
    with pytest.raises(DeriveError, match=r"^slow: the derivation ran past its time budget of 0\.1 s "
                                          r"at '(y|u|x)' \((chain rule|gradient)\); give more with "
                                          r"derive\.define\(\.\.\., budget=SECONDS\) or "
                                          r"SYMGRAD_DERIVE_BUDGET=SECONDS$"):
        derive.define("slow", two_bindings, budget=0.1, progress=False)  # takes ~0.7 s


def test_budget_comes_from_the_environment_when_not_given(monkeypatch):
    monkeypatch.setenv("SYMGRAD_DERIVE_BUDGET", "0.1")
    with pytest.raises(DeriveError, match=r"time budget of 0\.1 s"):
        derive.define("slow_env", two_bindings, progress=False)
    monkeypatch.setenv("SYMGRAD_DERIVE_BUDGET", "soon")
    with pytest.raises(DeriveError, match=r"^bad_env: SYMGRAD_DERIVE_BUDGET='soon' is not a number"):
        derive.define("bad_env", nested(1))
    monkeypatch.setenv("SYMGRAD_DERIVE_BUDGET", "0")  # no limit
    derive.define("no_limit", nested(1))


def test_progress_callback_hears_of_every_binding_and_gradient():
    heard = []
    derive.define("heard", two_bindings, progress=lambda *a: heard.append(a))
    assert {(layer, about) for layer, about, _, _ in heard} >= {("heard", n) for n in ("y", "u", "x")}
    assert all(isinstance(t, float) and t >= 0 for *_, t in heard)


def test_default_progress_is_a_line_per_step_on_stderr_once_it_runs_long(monkeypatch, capsys):
    monkeypatch.delenv("SYMGRAD_DERIVE_BUDGET", raising=False)
    monkeypatch.setattr(derive.budget, "PROGRESS_AFTER", 0.0)
    derive.define("chatty", nested(1))
    lines = capsys.readouterr().err.splitlines()
    assert "derive chatty: chain rule 'y' (0 s of 60 s)" in lines, lines
    assert any(line.startswith("derive chatty: gradient 'x'") for line in lines), lines


def test_budget_holds_off_the_main_thread_where_no_timer_can_interrupt_sympy():
    import threading

    caught = []

    def run():
        try:
            derive.define("slow_thread", two_bindings, budget=0.1, progress=False)
        except DeriveError as e:
            caught.append(str(e))

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert caught and "ran past its time budget of 0.1 s" in caught[0], caught
