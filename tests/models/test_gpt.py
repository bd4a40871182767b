"""The GPT's backward (layer kernels composed in reverse order) against central finite differences
and torch.autograd, and sampling."""

import numpy as np
import pytest

from symgrad.models.gpt import GPT, GPTConfig
from symgrad.models.sample import generate

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dtype="float64")


@pytest.fixture(scope="module")
def tiny():
    m = GPT(TINY, seed=1)
    rng = np.random.default_rng(0)
    # larger weights than the init so that every path carries a visible gradient
    for p in m.parameters():
        p.data += 0.1 * rng.standard_normal(p.shape)
    x = rng.integers(0, TINY.vocab_size, (3, 8))
    y = rng.integers(0, TINY.vocab_size, (3, 8))
    m.zero_grad()
    m(x, y)
    m.backward()
    return m, x, y


def test_tiny_gpt_gradients_match_central_finite_differences(tiny):
    m, x, y = tiny
    m.eval()
    rng = np.random.default_rng(5)
    h = 1e-5
    try:
        for name, p in m.named_parameters():
            # a few elements per parameter (all of them would take minutes)
            flat, gflat = p.data.reshape(-1), p.grad.reshape(-1)
            for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
                old = flat[i]
                flat[i] = old + h
                lp = m(x, y)[1]
                flat[i] = old - h
                lm = m(x, y)[1]
                flat[i] = old
                fd = (lp - lm) / (2 * h)
                rel = abs(fd - gflat[i]) / max(abs(fd), abs(gflat[i]), 1e-8)
                assert rel < 1e-6 or abs(fd - gflat[i]) < 1e-10, \
                    f"{name}[{i}]: backward {gflat[i]!r}, finite differences {fd!r}, rel {rel:.2e}"
    finally:
        m.train()


def test_tiny_gpt_gradients_match_torch_autograd(tiny):
    torch = pytest.importorskip("torch")
    from symgrad.models.torch_gpt import from_symgrad, torch_grads
    m, x, y = tiny
    tm = from_symgrad(m)
    loss = tm(torch.from_numpy(x), torch.from_numpy(y))
    loss.backward()
    m.eval()
    assert m(x, y)[1] == pytest.approx(loss.item(), rel=1e-12)
    m.train()
    tg = torch_grads(m, tm)
    for name, p in m.named_parameters():
        err = np.abs(p.grad - tg[name]).max()
        scale = np.abs(tg[name]).max()
        assert err <= 1e-9 * max(scale, 1e-3), f"{name}: max |symgrad - torch| {err:.3e} (scale {scale:.3e})"


def test_sampling_is_deterministic_under_a_seed_and_top_k_restricts_tokens():
    m = GPT(GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=1, n_embd=8, dtype="float64"), seed=0)
    a = generate(m, [1, 2], 12, temperature=0.9, top_k=3, seed=4)
    b = generate(m, [1, 2], 12, temperature=0.9, top_k=3, seed=4)
    assert a == b and len(a) == 14
    greedy = generate(m, [1], 5, top_k=1, seed=0)
    assert greedy == generate(m, [1], 5, top_k=1, seed=99)
