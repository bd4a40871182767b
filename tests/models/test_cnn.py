"""The CNN (models/cnn.py): its printed step's gradients against torch.autograd and finite
differences in float64, and training on the 8x8 digits to the issue's held-out accuracy."""

import numpy as np
import pytest

from tests.gradcheck import assert_close, central_differences

pytest.importorskip("sklearn", reason="the digits come with scikit-learn (the test extra installs it)")

from symgrad.models.cnn import CNN, digits, train_cnn  # noqa: E402


def _batch(n=5, seed=1):
    Xtr, ytr, _, _ = digits(seed=0)
    idx = np.random.default_rng(seed).choice(len(ytr), n, replace=False)
    return Xtr[idx].astype(np.float64), ytr[idx]


def test_cnn_gradients_match_torch_autograd_in_float64():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x, y = _batch()
    model = CNN(seed=3, dtype="float64")
    model.zero_grad()
    _, loss = model(x, y)
    model.backward()
    p = {n: torch.tensor(v.data, requires_grad=True) for n, v in model.named_parameters()}
    h = torch.from_numpy(x)
    for i in range(len(model.channels)):
        n = f"conv{i + 1}"
        h = F.max_pool2d(F.relu(F.conv2d(h, p[n + ".w"], p[n + ".b"], padding=1)), 2)
    ref = F.cross_entropy(h.flatten(1) @ p["fc.W"] + p["fc.b"], torch.from_numpy(y))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for n, v in model.named_parameters():
        np.testing.assert_allclose(v.grad, p[n].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=n)


def test_cnn_gradient_matches_central_differences_in_float64():
    x, y = _batch(n=3, seed=2)
    model = CNN(seed=4, dtype="float64")
    model.zero_grad()
    model(x, y)
    model.backward()
    params = dict(model.named_parameters())
    for name in ("conv1.w", "conv2.b", "fc.b"):  # the first and the last layer, and one between
        w = params[name]
        got, keep = w.grad.copy(), w.data.copy()

        def loss(args, w=w):
            w.data[...] = args["p"]
            return model(x, y)[1]
        fd = central_differences(loss, {"p": keep}, "p")
        w.data[...] = keep
        assert_close("cnn", name, got, fd, 1e-6, "central differences")


def test_cnn_trains_to_the_held_out_accuracy_on_the_digits():
    # float64: the kernels the gradient tests above compiled (float32 would compile them again)
    r = train_cnn(peer=False, log=lambda s: None, dtype="float64")
    assert r["accuracy"] >= 0.97
    assert r["losses"][-1] < r["losses"][0] / 10
