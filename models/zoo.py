"""The smaller models: an MLP classifier on spirals, RNN/LSTM character models trained by
truncated backpropagation through time, and Word2Vec skip-gram with negative sampling.

All of them compose kernel-calling layers; Word2Vec's loss is a layer defined here by its forward
expression only (`sgns_loss`), its gradient derived by derive/ like every other.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from sympy import exp, log

import derive

from .data import CharData, CharVocab, DataError, DataLoader, read_text, spirals
from .kernels import Op
from .layers import CrossEntropy, Elementwise, Embedding, KernelLayer, Linear, normal
from .module import Module, Param
from .trainer import Task, rng_state, set_rng_state


# --- MLP ---------------------------------------------------------------------------------
class MLP(Module):
    """Linear -> act -> ... -> Linear, with a cross-entropy (log-loss) head."""

    def __init__(self, sizes, act="tanh", seed=0, dtype="float32"):
        rng = np.random.default_rng(seed)
        self.layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.layers.append(Linear(a, b, rng, dtype))
            if i < len(sizes) - 2:
                self.layers.append(Elementwise(act, dtype))
        self.loss_fn = CrossEntropy(dtype)
        self.dtype = np.dtype(dtype)

    def forward(self, x, y=None):
        h = np.ascontiguousarray(x, dtype=self.dtype)
        for layer in self.layers:
            h = layer(h)
        return h if y is None else (h, self.loss_fn(h, y))

    def backward(self):
        g = self.loss_fn.backward(1.0)
        for layer in reversed(self.layers):
            g = layer.backward(g)

    def accuracy(self, x, y) -> float:
        was = self.training
        self.eval()
        try:
            return float((self(x).argmax(-1) == y).mean())
        finally:
            self.train(was)


def train_mlp(steps=600, lr=0.01, optimizer="adam", batch_size=None, seed=0, hidden=64, log=print,
              dtype="float32"):
    """Train the MLP on two spirals; returns (model, accuracy on a held-out spiral set, losses)."""
    from .optim import make_optimizer
    X, y = spirals(300, seed=seed)
    Xt, yt = spirals(300, seed=seed + 100)
    model = MLP([2, hidden, hidden, 2], "tanh", seed=seed, dtype=dtype)
    opt = make_optimizer(optimizer, model.parameters(), lr=lr)
    loader = DataLoader(X, y, batch_size=batch_size, seed=seed)
    losses, step = [], 0
    while step < steps:
        for xb, yb in loader:
            model.zero_grad()
            _, loss = model(xb, yb)
            model.backward()
            opt.step()
            losses.append(loss)
            step += 1
            if step % max(1, steps // 5) == 0:
                log(f"step {step:5d}  loss {loss:.4f}  accuracy {model.accuracy(Xt, yt):.3f}")
            if step >= steps:
                break
    return model, model.accuracy(Xt, yt), losses


# --- recurrent cells and character models ---------------------------------------------------
class RNNCell(KernelLayer):
    """h = tanh(x Wxh + h_prev Whh + bh), one time step per call."""

    def __init__(self, n_in, n_hidden, rng, dtype="float32"):
        super().__init__("rnn_cell", dtype)
        self.Wxh = Param(normal(rng, (n_in, n_hidden), 1 / np.sqrt(n_in), self.dtype))
        self.Whh = Param(normal(rng, (n_hidden, n_hidden), 1 / np.sqrt(n_hidden), self.dtype))
        self.bh = Param(np.zeros(n_hidden, self.dtype))

    def initial(self, batch):
        return (np.zeros((batch, self.bh.shape[0]), self.dtype),)

    def forward(self, x, state):
        return (self._forward(x=x, h_prev=state[0], Wxh=self.Wxh.data, Whh=self.Whh.data,
                              bh=self.bh.data)["h"],)

    def backward(self, g_state):
        d = self._backward(g=g_state[0])
        self._accumulate(d, Wxh=self.Wxh, Whh=self.Whh, bh=self.bh)
        return d["x"], (d["h_prev"],)


class LSTMCell(KernelLayer):
    """(h, c) = lstm_cell(x, h_prev, c_prev, W, b), one time step per call."""

    def __init__(self, n_in, n_hidden, rng, dtype="float32"):
        super().__init__("lstm_cell", dtype)
        self.W = Param(normal(rng, (n_in + n_hidden, 4, n_hidden), 1 / np.sqrt(n_in + n_hidden), self.dtype))
        b = np.zeros((4, n_hidden), self.dtype)
        b[1] = 1.0  # forget-gate bias 1: remember by default
        self.b = Param(b)

    def initial(self, batch):
        H = self.b.shape[1]
        return (np.zeros((batch, H), self.dtype), np.zeros((batch, H), self.dtype))

    def forward(self, x, state):
        r = self._forward(x=x, h_prev=state[0], c_prev=state[1], W=self.W.data, b=self.b.data)
        return (r["h"], r["c"])

    def backward(self, g_state):
        d = self._backward(g_h=g_state[0], g_c=g_state[1])
        self._accumulate(d, W=self.W, b=self.b)
        return d["x"], (d["h_prev"], d["c_prev"])


class CharRNN(Module):
    """Embedding -> recurrent cell over time -> linear head -> cross-entropy."""

    def __init__(self, vocab_size, hidden=128, cell="lstm", seed=0, dtype="float32", n_embd=32):
        rng = np.random.default_rng(seed)
        self.config = {"vocab_size": vocab_size, "hidden": hidden, "cell": cell, "seed": seed,
                       "dtype": dtype, "n_embd": n_embd}
        self.emb = Embedding(vocab_size, n_embd, rng, dtype, std=0.1)
        self.cell = (LSTMCell if cell == "lstm" else RNNCell)(n_embd, hidden, rng, dtype)
        self.head = Linear(hidden, vocab_size, rng, dtype)
        self.loss_fn = CrossEntropy(dtype)

    def forward(self, x, y=None, state=None):
        """x (B, T) ids -> logits (B, T, V), final state; with y also the loss."""
        B, T = x.shape
        state = self.cell.initial(B) if state is None else state
        e = self.emb(x)
        hs = []
        for t in range(T):
            state = self.cell(np.ascontiguousarray(e[:, t]), state)
            hs.append(state[0])
        logits = self.head(np.stack(hs, 1))
        if y is None:
            return logits, state
        return logits, state, self.loss_fn(logits, y)

    def backward(self):
        """Backpropagation through the time steps of the last forward (truncated there)."""
        dH = self.loss_fn.backward(1.0)
        dH = self.head.backward(dH)
        B, T, _ = dH.shape
        g_state = tuple(np.zeros_like(s) for s in self.cell.initial(B))
        dx = []
        for t in reversed(range(T)):
            g = (g_state[0] + dH[:, t],) + g_state[1:]  # h feeds the head and the next step
            d_x, g_state = self.cell.backward(g)
            dx.append(d_x)
        self.emb.backward(np.stack(dx[::-1], 1))


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
    vocab = CharVocab(config["vocab"])

    def logits_fn(ids):
        logits, _ = model(np.asarray(ids, dtype=np.int64)[None, -256:])
        return logits[0, -1]
    return model, vocab, logits_fn


# --- Word2Vec ------------------------------------------------------------------------------
def sgns_loss(G):
    """Skip-gram negative-sampling loss: mean over pairs n of
    -log sigmoid(v[n] . u[n]) - sum_k log sigmoid(-v[n] . w[n,k])."""
    N, K, D = G.dims("N K D")
    v = G.input("v", (N, D))
    u = G.input("u", (N, D))
    w = G.input("w", (N, K, D))
    n, k, d = G.indices(n=N, k=K, d=D)
    pos = G.bind("pos", (n,), G.sum(v[n, d] * u[n, d], d))
    neg = G.bind("neg", (n, k), G.sum(v[n, d] * w[n, k, d], d))
    G.output(G.bind("loss", (), G.sum(log(1 + exp(-pos[n])) + G.sum(log(1 + exp(neg[n, k])), k), n) / N))


_SGNS = {}


def sgns_op(dtype):
    if "d" not in _SGNS:
        _SGNS["d"] = derive.define("sgns_loss", sgns_loss)
    return Op(_SGNS["d"], dtype)


class Word2Vec(Module):
    def __init__(self, n_words, dim=64, seed=0, dtype="float32"):
        rng = np.random.default_rng(seed)
        self.inp = Embedding(n_words, dim, rng, dtype, std=0.5 / dim)
        self.outp = Embedding(n_words, dim, rng, dtype, std=0.5 / dim)
        self.outn = Embedding(n_words, dim, rng, dtype)
        self.outn.table = self.outp.table  # the same output table, used twice: gradients add
        self._op = sgns_op(dtype)

    def named_parameters(self, prefix=""):
        yield prefix + "inp.table", self.inp.table
        yield prefix + "out.table", self.outp.table

    def forward(self, centre, context, negatives):
        v = self.inp(centre)
        u = self.outp(context)
        w = self.outn(negatives)
        res, self._ctx = self._op(v=v, u=u, w=w)
        return float(res["loss"])

    def backward(self):
        d = self._op.backward(self._ctx, g=1.0)
        self.outn.backward(d["w"])
        self.outp.backward(d["u"])
        self.inp.backward(d["v"])

    def neighbours(self, i, k=5):
        """The k words nearest to word i by cosine similarity of the input vectors."""
        E = self.inp.table.data.astype(np.float64)
        E = E / (np.linalg.norm(E, axis=1, keepdims=True) + 1e-12)
        sims = E @ E[i]
        sims[i] = -np.inf
        return list(np.argsort(-sims)[:k])


def word_corpus(text, min_count=5):
    """(vocab, ids, counts): words of at least min_count occurrences, most frequent first."""
    words = re.findall(r"[a-z']+", text.lower())
    counts = Counter(words)
    vocab = [w for w, c in counts.most_common() if c >= min_count]
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.array([index[w] for w in words if w in index], dtype=np.int64)
    freq = np.array([counts[w] for w in vocab], dtype=np.float64)
    return vocab, ids, freq


def subsample(ids, freq, t, rng):
    """Mikolov's subsampling: word w is kept with probability sqrt(t/f) + t/f (f its frequency),
    so 'the', 'and', 'i' stop dominating the pairs; windows then span the kept words."""
    f = freq / freq.sum()
    keep = np.minimum(1.0, np.sqrt(t / f) + t / f)
    return ids[rng.random(len(ids)) < keep[ids]]


NEIGHBOUR_WORDS = ("king", "queen", "thou", "lord", "love", "death")


def train_word2vec(text, steps=3000, lr=0.01, optimizer="adam", batch_size=512, dim=50, window=4, k_neg=5,
                   sample=1e-3, seed=0, log=print, words=NEIGHBOUR_WORDS):
    """Skip-gram with negative sampling; returns (model, {word: nearest words}, per-step losses).
    Each step draws batch_size (centre, context) pairs from a subsampled word stream, context
    at most `window` words away, and k_neg negatives per pair from the unigram^0.75 noise."""
    from .optim import make_optimizer
    vocab, ids, freq = word_corpus(text)
    if len(ids) < 2 * window + 2:
        raise DataError("the text has too few words for Word2Vec")
    rng = np.random.default_rng(seed)
    noise = freq ** 0.75
    noise /= noise.sum()
    model = Word2Vec(len(vocab), dim, seed)
    opt = make_optimizer(optimizer, model.parameters(), lr=lr)
    losses = []
    stream = ids
    for step in range(1, steps + 1):
        if step == 1 or step % 500 == 0:  # a fresh subsample now and then
            stream = subsample(ids, freq, sample, rng) if sample else ids
            if len(stream) < 2 * window + 2:
                stream = ids
        c = rng.integers(window, len(stream) - window, batch_size)
        off = rng.integers(1, window + 1, batch_size) * rng.choice([-1, 1], batch_size)
        neg = rng.choice(len(vocab), size=(batch_size, k_neg), p=noise)
        model.zero_grad()
        loss = model(stream[c], stream[c + off], neg)
        model.backward()
        opt.step()
        losses.append(loss)
        if step % max(1, steps // 5) == 0:
            log(f"step {step:5d}  loss {np.mean(losses[-50:]):.4f}")
    index = {w: i for i, w in enumerate(vocab)}
    neighbours = {w: [vocab[j] for j in model.neighbours(index[w])] for w in words if w in index}
    return model, neighbours, losses


# --- `symgrad train mlp|rnn|lstm|word2vec` -------------------------------------------------
def train_cli(a, UsageError) -> int:
    from .optim import make_optimizer
    from .schedules import make_schedule
    from .trainer import Trainer
    if a.resume and a.model not in ("rnn", "lstm"):
        raise UsageError(f"--resume is supported for gpt, rnn and lstm, not {a.model}")
    if a.model == "mlp":
        model, acc, losses = train_mlp(steps=a.steps or 600, lr=a.lr if a.lr is not None else 0.01,
                                       optimizer=a.optimizer or "adam", batch_size=a.batch_size, seed=a.seed,
                                       hidden=a.hidden or 64)
        print(f"MLP on two spirals: loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out accuracy {acc:.3f}")
        return 0
    try:
        text = read_text(a.text)
    except DataError as e:
        raise UsageError(str(e)) from None
    if a.model == "word2vec":
        try:
            _, nb, losses = train_word2vec(text, steps=a.steps or 3000, lr=a.lr if a.lr is not None else 0.01,
                                           optimizer=a.optimizer or "adam", batch_size=a.batch_size or 512,
                                           seed=a.seed)
        except DataError as e:
            raise UsageError(str(e)) from None
        print(f"Word2Vec skip-gram, negative sampling: loss {np.mean(losses[:50]):.3f} -> "
              f"{np.mean(losses[-50:]):.3f}; nearest neighbours (cosine):")
        for w, ns in nb.items():
            print(f"  {w:8s} -> {', '.join(ns)}")
        return 0
    from pathlib import Path
    from . import checkpoint
    ck = None
    if a.resume:
        try:
            ck = checkpoint.load(a.resume)
        except checkpoint.CheckpointError as e:
            raise UsageError(str(e)) from None
        if ck["meta"].get("kind") != a.model:
            raise UsageError(f"checkpoint {ck['path']} is from a '{ck['meta'].get('kind')}' run, not '{a.model}'")
        conf = ck["meta"]["config"]
        hidden, batch, seed, bptt = conf["model"]["hidden"], conf["batch_size"], conf["seed"], conf["bptt"]
        if (a.hidden and a.hidden != hidden) or (a.batch_size and a.batch_size != batch):
            raise UsageError(f"checkpoint {ck['path']} is from another config (hidden {hidden}, batch {batch})")
        out = ck["path"].parent
    else:
        hidden, batch, seed, bptt = a.hidden or 128, a.batch_size or 32, a.seed, a.block_size or 32
        out = Path(a.out) if a.out else None
        if out is None:
            n = 1
            while Path("runs", f"{a.model}-{n}").exists():
                n += 1
            out = Path("runs", f"{a.model}-{n}")
        if (out / "ckpt.npz").exists():
            raise UsageError(f"{out / 'ckpt.npz'} exists; pass --resume {out} to continue it, or another --out")
    try:
        task = CharRNNTask(a.model, text, hidden=hidden, batch_size=batch, bptt=bptt, seed=seed)
    except DataError as e:
        raise UsageError(str(e)) from None
    steps = a.steps or 1000
    lr = a.lr if a.lr is not None else 3e-3
    try:
        opt = make_optimizer(a.optimizer or "adam", task.model.parameters(),
                             schedule=make_schedule(a.schedule, lr, steps),
                             max_grad_norm=a.max_grad_norm if a.max_grad_norm is not None else 5.0)
    except ValueError as e:
        raise UsageError(str(e)) from None
    trainer = Trainer(task, task.model, opt, out, eval_interval=a.eval_interval or max(1, steps // 5),
                      progress=not a.no_progress)
    if ck is not None:
        trainer.restore(ck)
    print(f"training char {a.model.upper()} (hidden {hidden}, {task.model.num_parameters():,} parameters, "
          f"truncated BPTT over {bptt} steps, batch {batch}) for {steps} steps -> {out}")
    rc = trainer.run_for_cli(steps)
    if rc is not None:
        return rc
    if a.sample_tokens > 0:
        from .sample import generate
        model, vocab = task.model, task.data.vocab

        def fn(ids):
            return model(np.asarray(ids, dtype=np.int64)[None, -256:])[0][0, -1]
        ids = generate(model, vocab.encode("\n"), min(a.sample_tokens, 200), 0.8, None, seed,
                       logits_fn=fn)
        print("--- sample ---")
        print(vocab.decode(ids[1:]))
    return 0


__all__ = ["MLP", "train_mlp", "RNNCell", "LSTMCell", "CharRNN", "CharRNNTask", "Word2Vec",
           "train_word2vec", "sgns_loss", "train_cli", "char_rnn_sampler"]
