"""Same trajectory as PyTorch: the reference GPT config, identical initial weights and batches,
50 AdamW steps in float32; per-step losses agree within 1e-3."""

import numpy as np
import pytest


def test_reference_gpt_follows_pytorch_for_50_adamw_steps():
    torch = pytest.importorskip("torch")
    from symgrad.models.data import CharData, read_text
    from symgrad.models.gpt import GPT, GPTConfig
    from symgrad.models.optim import AdamW
    from symgrad.models.torch_gpt import from_symgrad
    torch.set_num_threads(2)
    data = CharData(read_text(), 64)
    m = GPT(GPTConfig(vocab_size=len(data.vocab)), seed=0)
    tm = from_symgrad(m)
    opt = AdamW(m.parameters(), lr=1e-3, wd=0.1)
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-3, weight_decay=0.1, eps=1e-8)
    rng = np.random.default_rng(0)
    rows = []
    for step in range(50):
        x, y = data.batch("train", 12, rng)
        m.zero_grad()
        _, loss = m(x, y)
        m.backward()
        opt.step()
        topt.zero_grad()
        tl = tm(torch.from_numpy(x), torch.from_numpy(y))
        tl.backward()
        topt.step()
        rows.append((step, loss, tl.item(), abs(loss - tl.item())))
    table = "\n".join(f"step {s:2d}  symgrad {a:.6f}  torch {b:.6f}  |diff| {d:.2e}" for s, a, b, d in rows)
    print(table)
    worst = max(rows, key=lambda r: r[3])
    assert worst[3] < 1e-3, f"step {worst[0]}: symgrad {worst[1]:.6f}, torch {worst[2]:.6f}\n{table}"
