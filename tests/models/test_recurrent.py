"""RNN and LSTM character models: backpropagation through time (the cell kernels composed over
time steps in reverse) against float64 central finite differences, and the LSTM beating the RNN
on tinyshakespeare at equal steps."""

import numpy as np
import pytest

from symgrad.models.recurrent import CharRNN, CharRNNTask


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_bptt_gradients_of_a_4_step_unroll_match_central_finite_differences(cell):
    m = CharRNN(7, hidden=5, cell=cell, seed=1, dtype="float64", n_embd=4)
    rng = np.random.default_rng(0)
    for p in m.parameters():  # larger weights than the init: every path carries a visible gradient
        p.data += 0.3 * rng.standard_normal(p.shape)
    x, y = rng.integers(0, 7, (2, 4)), rng.integers(0, 7, (2, 4))
    state = tuple(0.5 * rng.standard_normal(s.shape) for s in m.initial(2))  # a carried state
    m.zero_grad()
    m(x, y, state)
    m.backward()
    m.eval()
    h = 1e-6
    try:
        for name, p in m.named_parameters():
            flat, grad = p.data.reshape(-1), p.grad.reshape(-1)
            scale = max(np.abs(grad).max(), 1e-3)
            for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
                old = flat[i]
                flat[i] = old + h
                up = m(x, y, state)[2]
                flat[i] = old - h
                down = m(x, y, state)[2]
                flat[i] = old
                fd = (up - down) / (2 * h)
                assert abs(fd - grad[i]) <= 1e-6 * scale, \
                    f"{cell} {name}[{i}]: BPTT {grad[i]!r}, finite differences {fd!r} (scale {scale:.3g})"
    finally:
        m.train()


def _val_loss_after(cell, steps):
    from symgrad.models.optim import make_optimizer
    from symgrad.models.data import read_text
    task = CharRNNTask(cell, read_text(), hidden=64, batch_size=16, bptt=64, seed=0, eval_iters=20)
    opt = make_optimizer("adam", task.model.parameters(), lr=2e-2, max_grad_norm=5.0)
    for _ in range(steps):
        task.model.zero_grad()
        task.train_step()
        opt.step()
    return task.val_loss()


def test_lstm_val_loss_beats_rnn_at_equal_steps_on_tinyshakespeare():
    """Hidden 64, 16 streams, BPTT over 64 characters, Adam 2e-2, 400 steps each (measured with
    seeds 0 and 1: LSTM 2.098 vs RNN 2.141, and 2.086 vs 2.160; at lr 1e-2 the margin is 0.01-0.05)."""
    rnn, lstm = _val_loss_after("rnn", 400), _val_loss_after("lstm", 400)
    assert lstm < rnn, f"after 400 steps: LSTM val loss {lstm:.4f}, RNN {rnn:.4f}"


def test_lstm_resume_continues_the_same_loss_curve(tmp_path):
    from symgrad.models import checkpoint
    from symgrad.train_cmd import train_main
    common = ["--hidden", "16", "--eval-interval", "2", "--no-progress", "--sample-tokens", "0"]
    assert train_main(["lstm", "--steps", "6", "--out", str(tmp_path / "full"), *common]) == 0
    assert train_main(["lstm", "--steps", "4", "--out", str(tmp_path / "part"), *common]) == 0
    assert train_main(["lstm", "--resume", str(tmp_path / "part"), "--steps", "6", "--no-progress",
                       "--sample-tokens", "0"]) == 0
    full = np.array(checkpoint.load(tmp_path / "full")["meta"]["history"])[:, 1]
    part = np.array(checkpoint.load(tmp_path / "part")["meta"]["history"])[:, 1]
    np.testing.assert_array_equal(part, full)  # the stream resets come from the saved RNG
