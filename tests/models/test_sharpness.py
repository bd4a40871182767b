"""Sharpness (models.sharpness): Lanczos over whole-model HVPs finds the top eigenvalue of the
Hessian built column by column, and `symgrad train gpt --sharpness-every N` records it."""

import numpy as np
import pytest

from symgrad.models import checkpoint
from symgrad.models.sharpness import sharpness, top_eigenvalue
from symgrad.models.mlp import MLP
from symgrad.cli import main


def test_lanczos_finds_the_top_eigenvalue_of_a_symmetric_matrix():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((150, 150))
    h = a @ a.T / 150 - 0.5 * np.eye(150)  # indefinite: the largest, not the largest |.|
    lam, iters = top_eigenvalue(lambda v: h @ v, rng.standard_normal(150), iters=60, rtol=1e-8)
    assert lam == pytest.approx(np.linalg.eigvalsh(h)[-1], rel=1e-6) and iters < 60


def test_mlp_sharpness_is_the_top_eigenvalue_of_its_hessian():
    m = MLP([3, 4, 3], act="tanh", seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((10, 3)), rng.integers(0, 3, 10)
    idx = [i for name, (o, shape) in m.store.spec.items() for i in range(o, o + int(np.prod(shape)))]
    hess = np.empty((len(idx), len(idx)))
    for c, i in enumerate(idx):  # H column by column: H e_i
        e = np.zeros_like(m.store.flat)
        e[i] = 1.0
        hess[:, c] = m.hvp(e, x, y)[2][idx]
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)
    lam, _ = sharpness(m, x, y, iters=len(idx))
    assert lam == pytest.approx(np.linalg.eigvalsh(hess)[-1], rel=1e-3)


def test_train_gpt_records_sharpness_in_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "gpt", "--steps", "4", "--sharpness-every", "2", "--n-layer", "1", "--n-embd", "16",
                 "--n-head", "2", "--block-size", "8", "--batch-size", "2", "--out", str(out),
                 "--no-progress", "--sample-tokens", "0"]) == 0
    assert "sharpness: 2: " in capsys.readouterr().out
    hist = checkpoint.load(out)["meta"]["sharpness_history"]
    assert [s for s, _ in hist] == [2, 4] and all(np.isfinite(v) and v > 0 for _, v in hist)


def test_sharpness_is_refused_for_other_models(capsys):
    assert main(["train", "mlp", "--sharpness-every", "5"]) == 2
    assert "--sharpness-every is measured for gpt" in capsys.readouterr().err
