"""Newton-CG on whole-model HVPs (models.newton): conjugate gradients solve H p = b from products
alone, Newton-CG reaches a logistic regression's optimum in fewer passes over the data than Adam
and SciPy's L-BFGS where the features are correlated and unequally scaled (and not L-BFGS where
they are well conditioned: both cases are asserted as they are), and trains the MLP from the CLI."""

import numpy as np

from symgrad.models import newton
from symgrad.cli import main


def test_conjugate_gradient_solves_a_positive_definite_system_from_products_alone():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 12))
    h = a @ a.T + 0.5 * np.eye(12)
    b = rng.standard_normal(12)
    p, iters = newton.conjugate_gradient(lambda v: h @ v, b, rtol=1e-12, max_iters=100)
    np.testing.assert_allclose(p, np.linalg.solve(h, b), rtol=1e-8, atol=1e-10)
    assert iters <= 24  # exact in n steps in exact arithmetic; rounding at rtol 1e-12 adds a few
    indefinite = np.diag([1.0, -1.0])
    p, iters = newton.conjugate_gradient(lambda v: indefinite @ v, np.array([0.0, 1.0]), 1e-8, 10)
    assert iters == 1 and p @ np.array([0.0, 1.0]) > 0  # negative curvature: stop, keep descending


def _compare(decades):
    x, y = newton.logistic_data(n=400, d=6, classes=3, decades=decades)
    return newton.compare(lambda: newton.Objective(newton.logistic_regression(x, y), x, y),
                          gap=1e-8, max_passes=2000, adam_lrs=(1e-2, 1e-1))


def test_newton_cg_reaches_the_optimum_in_fewer_passes_than_adam_and_lbfgs_on_correlated_features():
    res = _compare(2.0)
    rows = {r["method"].split(" ")[0]: r for r in res["rows"]}
    ours = rows.pop("Newton-CG")
    assert ours["passes"] is not None and ours["final_gap"] <= 1e-8, newton.table(res)
    for r in res["rows"][1:]:
        assert r["passes"] is None or r["passes"] > ours["passes"], newton.table(res)


def test_on_well_conditioned_features_lbfgs_needs_fewer_passes_and_adam_more():
    res = _compare(0.0)
    ours, lbfgs, *adams = res["rows"]
    assert ours["final_gap"] <= 1e-8 and lbfgs["passes"] < ours["passes"], newton.table(res)
    assert all(a["passes"] is None or a["passes"] > ours["passes"] for a in adams), newton.table(res)


def test_symgrad_train_mlp_with_newton_cg_lowers_the_loss(capsys):
    assert main(["train", "mlp", "--optimizer", "newton-cg", "--steps", "6", "--hidden", "16"]) == 0
    out = capsys.readouterr().out
    first, last = (float(s) for s in out.split("MLP on two spirals: loss ")[1].split(",")[0].split(" -> "))
    assert last < 0.8 * first, out


def test_newton_cg_is_refused_for_a_model_it_does_not_train(capsys):
    assert main(["train", "gpt", "--optimizer", "newton-cg", "--steps", "1"]) == 2
    assert "newton-cg trains the mlp" in capsys.readouterr().err
