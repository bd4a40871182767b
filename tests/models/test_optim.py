"""Optimizers: each printed update rule equals a float64 NumPy reference of one step, and every
optimizer decreases a convex quadratic; schedules and clipping."""

import numpy as np
import pytest

from symgrad import models
from symgrad.models import rules
from symgrad import compiled
from symgrad.models.module import Param
from symgrad.models.optim import OPTIMIZERS, grad_norm, make_optimizer
from symgrad.models.schedules import Constant, CosineWarmup, StepDecay

HYPER = dict(lr=0.05, mu=0.8, wd=0.1, eps=1e-6, alpha=0.9, beta1=0.8, beta2=0.95, t=3.0, clip=0.7)


def numpy_step(rule, p, g, st, h):
    """Independent float64 NumPy reference of one update; returns (p_new, {state: new})."""
    g = h["clip"] * g
    lr, wd = h["lr"], h["wd"]
    if rule == "sgd":
        return p - lr * (g + wd * p), {}
    if rule in ("momentum", "nesterov"):
        g = g + wd * p
        v = h["mu"] * st["v"] + g
        upd = v if rule == "momentum" else g + h["mu"] * v
        return p - lr * upd, {"v": v}
    if rule == "adagrad":
        s = st["s"] + g * g
        return p - lr * g / (np.sqrt(s) + h["eps"]), {"s": s}
    if rule == "rmsprop":
        s = h["alpha"] * st["s"] + (1 - h["alpha"]) * g * g
        return p - lr * g / (np.sqrt(s) + h["eps"]), {"s": s}
    b1, b2, t = h["beta1"], h["beta2"], h["t"]
    if rule == "adam":
        g = g + wd * p
    m = b1 * st["m"] + (1 - b1) * g
    v = b2 * st["v"] + (1 - b2) * g * g
    step = lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + h["eps"])
    base = p * (1 - lr * wd) if rule == "adamw" else p
    return base - step, {"m": m, "v": v}


@pytest.mark.parametrize("rule", list(rules.STATE))
def test_update_rule_kernel_matches_numpy_reference_of_one_step(rule):
    rng = np.random.default_rng(1)
    n = 37
    p, g = rng.standard_normal(n), rng.standard_normal(n)
    st = {s: np.abs(rng.standard_normal(n)) for s in rules.STATE[rule]}
    k = compiled.kernels(rules.rule(rule), "float64")
    consts = {c.name: HYPER[c.name] for c in k.derivation.constants}
    got = k.forward(p=p.copy(), grad=g.copy(), **{s: a.copy() for s, a in st.items()}, **consts)
    want_p, want_st = numpy_step(rule, p, g, st, HYPER)
    np.testing.assert_allclose(got["p_new"], want_p, rtol=1e-12, atol=1e-14, err_msg=f"{rule}: p_new")
    for s, a in want_st.items():
        np.testing.assert_allclose(got[f"{s}_new"], a, rtol=1e-12, atol=1e-14, err_msg=f"{rule}: {s}_new")


@pytest.mark.parametrize("rule", list(rules.STATE))
def test_optimizer_step_in_place_equals_numpy_reference(rule):
    rng = np.random.default_rng(2)
    shapes = [(3, 4), (5,)]
    ps = [Param(rng.standard_normal(s)) for s in shapes]
    for p in ps:
        p.grad[...] = rng.standard_normal(p.shape)
    cls = OPTIMIZERS[rule]
    h = {k: HYPER[k] for k in cls.defaults if k != "lr"}
    opt = cls(ps, lr=HYPER["lr"], **h)
    ref = {k: v for k, v in HYPER.items()}
    ref.update(clip=1.0)
    state = [{s: np.zeros(p.shape) for s in rules.STATE[rule]} for p in ps]
    for t in (1, 2):
        ref["t"] = float(t)
        want = [numpy_step(rule, p.data.copy(), p.grad.copy(), st, dict(ref, **{k: 0.0 for k in ("wd",) if k not in h}))
                for p, st in zip(ps, state)]
        opt.step()
        for (wp, wst), p, st in zip(want, ps, state):
            np.testing.assert_allclose(p.data, wp, rtol=1e-12, atol=1e-14, err_msg=f"{rule} step {t}")
            st.update(wst)


def quadratic_loss_and_grad(p, target, mse):
    """Loss mean((p - target)^2) and its gradient, both from the mse layer's kernels."""
    res = mse.forward(pred=p.data, target=target)
    p.grad[...] = mse.backward(g=1.0, pred=p.data, target=target)["pred"]
    return float(res["loss"])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_decreases_a_convex_quadratic(name):
    rng = np.random.default_rng(3)
    target = rng.standard_normal((4, 6))
    p = Param(np.zeros((4, 6)))
    mse = compiled.kernels("mse", "float64")
    lr = {"adagrad": 0.3, "rmsprop": 0.02, "adam": 0.05, "adamw": 0.05}.get(name, 1.0)
    opt = make_optimizer(name, [p], lr=lr)
    losses = []
    for _ in range(60):
        losses.append(quadratic_loss_and_grad(p, target, mse))
        opt.step()
    assert losses[-1] < 0.1 * losses[0], f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"


def test_clipping_scales_the_update_to_the_global_norm():
    p = Param(np.zeros(4))
    p.grad[...] = [3.0, 4.0, 0.0, 0.0]                    # norm 5
    assert grad_norm([p]) == pytest.approx(5.0)
    opt = models.SGD([p], lr=1.0, max_grad_norm=1.0)
    opt.step()
    np.testing.assert_allclose(p.data, [-0.6, -0.8, 0, 0], rtol=1e-6)


def test_schedules():
    assert Constant(0.1)(1000) == 0.1
    s = StepDecay(1.0, 10, 0.5)
    assert (s(0), s(9), s(10), s(25)) == (1.0, 1.0, 0.5, 0.25)
    c = CosineWarmup(1.0, 10, 110, 0.0)
    assert c(0) == pytest.approx(0.1) and c(9) == pytest.approx(1.0)
    assert c(60) == pytest.approx(0.5) and c(110) == 0.0


@pytest.mark.parametrize("lr", [-1e-3, float("nan"), float("inf")])
def test_bad_learning_rate_is_refused(lr):
    with pytest.raises(ValueError, match="learning rate"):
        models.AdamW([Param(np.zeros(2))], lr=lr)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        make_optimizer("adamx", [Param(np.zeros(2))])


def test_each_optimizer_s_defaults_are_its_update_rule_s_constants():
    from symgrad.models import rules
    from symgrad.models.optim import OPTIMIZERS

    for name, cls in OPTIMIZERS.items():
        consts = {c.name: c.default for c in rules.rule(cls.rule).constants}
        assert cls.defaults == {k: v for k, v in consts.items() if k not in rules.PER_STEP}, name
    assert OPTIMIZERS["adamw"].defaults["wd"] == 0.01 and OPTIMIZERS["adam"].defaults["wd"] == 0.0


def test_a_rules_derivation_is_read_from_the_cache_in_the_next_process(tmp_path, monkeypatch):
    from tests.cache_dir import kernel_cache_at
    with kernel_cache_at(tmp_path):
        rules.rule.cache_clear()
        first = rules.rule("sgd")
        assert list((tmp_path / "derivations").glob("rule-sgd-*.pickle"))
        rules.rule.cache_clear()  # as a new process: derive.define must not run again
        monkeypatch.setattr(rules.derive, "define", lambda *a, **k: pytest.fail("derived again"))
        again = rules.rule("sgd")
    rules.rule.cache_clear()
    assert str(again.grads["p"]) == str(first.grads["p"])
