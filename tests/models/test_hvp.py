"""The whole-model Hessian-vector product (models.hvp: tangent forward, then the tangent of the
backward, through the model graph) against torch's double backward for a tiny GPT, and against
central finite differences of the planned step's own gradient for an MLP and a BPTT-unrolled
RNN (stacks and rows of the state between time steps)."""

import numpy as np
import pytest

from symgrad.models.gpt import GPT, GPTConfig
from symgrad.models.mlp import MLP
from symgrad.models.recurrent import CharRNN


def direction(model, rng):
    """A random direction over the parameters, zero in the flat buffer's padding."""
    return model.store.flat_like(rng.standard_normal)


def step_gradient(model, *data):
    """The planned training step's gradient (flat), not the HVP pass's."""
    model.train()
    model(*data)
    model.backward()
    return model.store.grad.copy()


def fd_of_gradient(model, v, *data, h=1e-5):
    """(grad(θ + h v) - grad(θ - h v)) / 2h from the training step."""
    flat = model.store.flat
    old = flat.copy()
    try:
        flat[:] = old + h * v
        up = step_gradient(model, *data)
        flat[:] = old - h * v
        down = step_gradient(model, *data)
    finally:
        flat[:] = old
    return (up - down) / (2 * h)


def test_tiny_gpt_hvp_equals_torch_double_backward_on_every_parameter():
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from symgrad.models.torch_gpt import from_symgrad, name_map
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dtype="float64")
    m = GPT(cfg, seed=1)
    rng = np.random.default_rng(0)
    for p in m.parameters():  # larger weights than the init: every path has visible curvature
        p.data += 0.1 * rng.standard_normal(p.shape)
    x, y = rng.integers(0, 11, (3, 8)), rng.integers(0, 11, (3, 8))
    tm = from_symgrad(m)
    params = dict(tm.named_parameters())
    names = name_map(cfg.n_layer)
    ps = [params[names[n]] for n in m.store.spec]
    with sdpa_kernel(SDPBackend.MATH):  # the flash kernel on the CPU has no double backward
        loss_t = tm(torch.from_numpy(x), torch.from_numpy(y))
    grads_t = torch.autograd.grad(loss_t, ps, create_graph=True)
    for trial in range(2):
        v = direction(m, rng)
        loss, grad, hv = m.hvp(v, x, y)
        assert loss == pytest.approx(loss_t.item(), rel=1e-12)
        dot = sum((g * torch.from_numpy(m.store.view(n, v).copy())).sum() for g, n in zip(grads_t, m.store.spec))
        hv_t = torch.autograd.grad(dot, ps, retain_graph=True)
        for n, g_t, h_t in zip(m.store.spec, grads_t, hv_t):
            ours, theirs = m.store.view(n, hv), h_t.numpy()
            scale = max(np.abs(theirs).max(), 1e-3)
            assert np.abs(ours - theirs).max() <= 1e-9 * scale, \
                f"direction {trial}, {n}: max |Hv - torch| {np.abs(ours - theirs).max():.3e} (scale {scale:.3e})"
            assert np.abs(m.store.view(n, grad) - g_t.detach().numpy()).max() <= 1e-9 * max(
                np.abs(g_t.detach().numpy()).max(), 1e-3)


def test_mlp_hvp_equals_finite_differences_of_the_step_gradient_and_is_symmetric():
    m = MLP([3, 6, 4], act="tanh", seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((9, 3)), rng.integers(0, 4, 9)
    u, w = direction(m, rng), direction(m, rng)
    loss, grad, hu = m.hvp(u, x, y)
    np.testing.assert_allclose(grad, step_gradient(m, x, y), rtol=0, atol=1e-14)
    fd = fd_of_gradient(m, u, x, y)
    assert np.abs(hu - fd).max() <= 1e-7 * np.abs(fd).max()
    _, _, hw = m.hvp(w, x, y)
    assert w @ hu == pytest.approx(u @ hw, rel=1e-12)  # H is symmetric: wᵀ H u = uᵀ H w
    assert not np.any(hu[m.store.flat == 0] * 0)  # padding stays zero (no NaN either)


def test_rnn_hvp_through_the_unrolled_steps_equals_finite_differences():
    m = CharRNN(6, hidden=4, cell="rnn", seed=1, dtype="float64", n_embd=3)
    rng = np.random.default_rng(2)
    for p in m.parameters():
        p.data += 0.3 * rng.standard_normal(p.shape)
    x, y = rng.integers(0, 6, (2, 3)), rng.integers(0, 6, (2, 3))
    state = tuple(0.5 * rng.standard_normal(s.shape) for s in m.initial(2))
    v = direction(m, rng)
    _, _, hv = m.hvp(v, x, y, state)
    fd = fd_of_gradient(m, v, x, y, state)
    assert np.abs(hv - fd).max() <= 1e-7 * np.abs(fd).max()


def test_a_direction_of_the_wrong_size_is_refused_in_one_line():
    m = MLP([2, 3], seed=0, dtype="float64")
    with pytest.raises(ValueError, match="flat like the parameter buffer"):
        m.hvp(np.zeros(3), np.zeros((4, 2)), np.zeros(4, np.int64))
