"""The recurrent character models: an RNN or LSTM cell over time between an embedding and a
linear head, trained by truncated backpropagation through time (`symgrad train rnn|lstm`,
`symgrad sample` on their checkpoints).

A graph of derived layers declared forward only (`models.graph`, `char_rnn_graph`), trained
through its planned, printed step; `CharRNNTask` is the run as a `models.trainer.Task`.
"""

from __future__ import annotations

import numpy as np

from .data import CharData, CharVocab
from .graph import ModelGraph, normal
from .module import GraphModel
from .trainer import Task, rng_state, set_rng_state


def char_rnn_graph(cfg: dict, store, rng, B, T, loss=True) -> ModelGraph:
    """Embedding -> a recurrent cell over T steps (its state in from h0/c0, out as results h/c)
    -> linear head -> cross-entropy, time-major: x and y are (T, B). The cell is one node per
    step sharing its parameters, so backpropagation through time is the planner's reverse
    order and the parameter gradients the sum over steps, both read off this graph. The
    per-step states are laid out as the rows of one (T, B, H) stack, which the head reads whole."""
    V, H, E, lstm = cfg["vocab_size"], cfg["hidden"], cfg["n_embd"], cfg["cell"] == "lstm"
    G = ModelGraph(f"char_{cfg['cell']}", cfg["dtype"], store)
    x = G.input("x", (T, B), integer=True)
    state = [G.input("h0", (B, H))] + ([G.input("c0", (B, H))] if lstm else [])
    table = G.param("emb.table", (V, E), normal(rng, 0.1))
    if lstm:
        def forget_bias_one(shape):
            b = np.zeros(shape)
            b[1] = 1.0  # forget-gate bias 1: remember by default
            return b
        cell = {"W": G.param("cell.W", (E + H, 4, H), normal(rng, 1 / np.sqrt(E + H))),
                "b": G.param("cell.b", (4, H), forget_bias_one)}
    else:
        cell = {"Wxh": G.param("cell.Wxh", (E, H), normal(rng, 1 / np.sqrt(E))),
                "Whh": G.param("cell.Whh", (H, H), normal(rng, 1 / np.sqrt(H))),
                "bh": G.param("cell.bh", (H,))}
    hs = []
    for t in range(T):
        e = G.layer("embedding", f"emb.{t}", ids=G.row(x, t), table=table)
        if lstm:
            state = list(G.layer("lstm_cell", f"cell.{t}", x=e, h_prev=state[0], c_prev=state[1], **cell))
        else:
            state = [G.layer("rnn_cell", f"cell.{t}", x=e, h_prev=state[0], **cell)]
        hs.append(state[0])
    G.result("h", state[0])
    if lstm:
        G.result("c", state[1])
    hs = G.view(G.stack(hs, "hs"), (T * B, H))
    logits = G.layer("linear", "head", x=hs, W=G.param("head.W", (H, V), normal(rng, 1 / np.sqrt(H))),
                     b=G.param("head.b", (V,)))
    G.result("logits", logits)
    if loss:
        G.loss(G.layer("cross_entropy", "loss", logits=logits, targets=G.input("y", (T * B,), integer=True)))
    return G


class CharRNN(GraphModel):
    """Embedding -> recurrent cell (rnn or lstm) over time -> linear head -> cross-entropy."""

    def __init__(self, vocab_size, hidden=128, cell="lstm", seed=0, dtype="float32", n_embd=32):
        if cell not in ("rnn", "lstm"):
            raise ValueError(f"cell must be 'rnn' or 'lstm', got {cell!r}")
        self.config = {"vocab_size": vocab_size, "hidden": hidden, "cell": cell, "seed": seed,
                       "dtype": dtype, "n_embd": n_embd}
        super().__init__(dtype, seed)
        self.declare((1, 1))
        self._fed = None  # (ids fed so far, state after them): next_logits continues from there

    def build(self, store, rng, B, T, loss=True):
        return char_rnn_graph(self.config, store, rng, B, T, loss)

    def initial(self, batch):
        """The zero state: (h,) for an RNN, (h, c) for an LSTM."""
        H = self.config["hidden"]
        return tuple(np.zeros((batch, H), self.dtype) for _ in range(2 if self.config["cell"] == "lstm" else 1))

    def batch(self, x, y=None, state=None):
        x = np.asarray(x)
        B, T = x.shape
        state = self.initial(B) if state is None else state
        inputs = {"x": x.T, **{n: s for n, s in zip(("h0", "c0"), state)}}
        if y is not None:
            inputs["y"] = np.asarray(y).T.reshape(-1)
        return (B, T), inputs

    def forward(self, x, y=None, state=None):
        """x (B, T) ids -> logits (B, T, V), final state; with y also the loss."""
        (B, T), inputs = self.batch(x, y, state)
        loss = self.run((B, T), inputs, loss=y is not None)
        logits = self.result("logits").reshape(T, B, -1).transpose(1, 0, 2).copy()
        final = tuple(self.result(n).copy() for n in ("h", "c")[:len(self.initial(0))])
        return (logits, final) if y is None else (logits, final, loss)

    def next_logits(self, ids) -> np.ndarray:
        """Next-token logits after `ids`, fed one token at a time from the state after the ids
        fed before (a continued prompt costs one step per new token)."""
        ids = [int(i) for i in ids]
        seen, state = self._fed if self._fed is not None else ([], None)
        if ids[:len(seen)] != seen or not ids[len(seen):]:
            seen, state = [], None
        for tok in ids[len(seen):]:
            logits, state = self(np.array([[tok]]), state=state)
        self._fed = (ids, state)
        return logits[0, -1]


class CharRNNTask(Task):
    """B parallel streams through the train text, T steps per update, state carried across.

    Each step, each stream's carried state is reset to zero with probability `reset_prob`: a model
    that only ever continued a carried state never learns to start from the zero state, which is
    where validation and sampling begin (without resets its samples were rare characters only)."""

    def __init__(self, cell, text, hidden=128, batch_size=32, bptt=32, seed=0, dtype="float32", eval_iters=10,
                 reset_prob=1 / 8):
        self.kind = cell
        self.data = CharData(text, bptt)
        self.model = CharRNN(len(self.data.vocab), hidden, cell, seed, dtype)
        self.batch_size, self.bptt, self.seed, self.eval_iters = batch_size, bptt, seed, eval_iters
        self.tokens_per_step = batch_size * bptt
        n = (len(self.data.train) - 1) // batch_size
        self.streams = self.data.train[:n * batch_size + 1]
        self.stride = n
        self.pos = 0
        self.rng = np.random.default_rng(seed)
        self.state = None
        self.reset_prob = reset_prob

    def train_step(self):
        T, n = self.bptt, self.stride
        if self.pos + T >= n:
            self.pos, self.state = 0, None
        if self.state is not None:
            reset = self.rng.random(self.batch_size) < self.reset_prob
            for s in self.state:
                s[reset] = 0
        starts = np.arange(self.batch_size) * n + self.pos
        x = np.stack([self.streams[s:s + T] for s in starts])
        y = np.stack([self.streams[s + 1:s + T + 1] for s in starts])
        _, state, loss = self.model(x, y, self.state)
        self.state = tuple(s.copy() for s in state)  # carried, not differentiated through
        self.pos += T
        if np.isfinite(loss):
            self.model.backward()
        return loss

    def val_loss(self):
        self.model.eval()
        try:
            val, T, B = self.data.val, self.bptt, self.batch_size
            n = (len(val) - 1) // B
            state, losses = None, []
            for i in range(min(self.eval_iters, n // T)):
                starts = np.arange(B) * n + i * T
                x = np.stack([val[s:s + T] for s in starts])
                y = np.stack([val[s + 1:s + T + 1] for s in starts])
                _, state, loss = self.model(x, y, state)
                losses.append(loss)
            return float(np.mean(losses))
        finally:
            self.model.train()

    def rng_state(self):
        return rng_state(self.rng)

    def set_rng_state(self, s):
        set_rng_state(self.rng, s)

    def extra_state(self):
        out = {"pos": np.array(self.pos)}
        if self.state is not None:
            out.update({f"state{i}": s for i, s in enumerate(self.state)})
        return out

    def set_extra_state(self, extra):
        self.pos = int(extra["pos"])
        st = [extra[k] for k in sorted(k for k in extra if k.startswith("state"))]
        self.state = tuple(st) if st else None

    def config(self):
        return {"model": self.model.config, "batch_size": self.batch_size, "bptt": self.bptt,
                "seed": self.seed, "vocab": self.data.vocab.chars}


def char_rnn_sampler(config):
    """(model, vocab, logits_fn) for `symgrad sample` on an rnn/lstm checkpoint."""
    model = CharRNN(**config["model"])
    return model, CharVocab(config["vocab"]), model.next_logits


__all__ = ["CharRNN", "CharRNNTask", "char_rnn_graph", "char_rnn_sampler"]
