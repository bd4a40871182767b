"""The smaller models: an MLP classifier on spirals, RNN/LSTM character models trained by
truncated backpropagation through time, and Word2Vec skip-gram with negative sampling.

Each is a graph of derived layers declared forward only (`models.graph`), trained through its
planned, printed step; Word2Vec's loss is a layer defined here by its forward expression only
(`sgns_loss`), its gradient derived by derive/ like every other.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from sympy import exp, log

import derive

from .data import CharData, CharVocab, DataError, DataLoader, read_text, spirals
from .graph import ModelGraph
from .module import GraphModel
from .trainer import Task, rng_state, set_rng_state


def _normal(rng, std):
    return lambda shape: rng.standard_normal(shape) * std


# --- MLP ---------------------------------------------------------------------------------
def mlp_graph(sizes, act, dtype, store, rng, N, loss=True) -> ModelGraph:
    """Linear -> act -> ... -> Linear on N rows, with a cross-entropy (log-loss) head."""
    G = ModelGraph("mlp", dtype, store)
    h = G.input("x", (N, sizes[0]))
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        name = f"layers.{2 * i}"
        h = G.layer("linear", name, x=h, W=G.param(name + ".W", (a, b), _normal(rng, 1 / np.sqrt(a))),
                    b=G.param(name + ".b", (b,)))
        if i < len(sizes) - 2:
            h = G.layer(act, f"layers.{2 * i + 1}", x=h)
    G.result("logits", h)
    if loss:
        G.loss(G.layer("cross_entropy", "loss", logits=h, targets=G.input("y", (N,), integer=True)))
    return G


class MLP(GraphModel):
    """Linear -> act -> ... -> Linear, with a cross-entropy (log-loss) head."""

    def __init__(self, sizes, act="tanh", seed=0, dtype="float32"):
        self.sizes, self.act = list(sizes), act
        super().__init__(dtype, seed)
        self.declare((1,))

    def build(self, store, rng, N, loss=True):
        return mlp_graph(self.sizes, self.act, self.dtype, store, rng, N, loss)

    def batch(self, x, y=None):
        x = np.asarray(x)
        return (x.shape[0],), ({"x": x} if y is None else {"x": x, "y": np.asarray(y)})

    def forward(self, x, y=None):
        key, inputs = self.batch(x, y)
        loss = self.run(key, inputs, loss=y is not None)
        h = self.result("logits").copy()
        return h if y is None else (h, loss)

    def accuracy(self, x, y) -> float:
        was = self.training
        self.eval()
        try:
            return float((self(x).argmax(-1) == y).mean())
        finally:
            self.train(was)


def train_mlp(steps=600, lr=0.01, optimizer="adam", batch_size=None, seed=0, hidden=64, log=print,
              dtype="float32"):
    """Train the MLP on two spirals; returns (model, accuracy on a held-out spiral set, losses).
    `optimizer="newton-cg"`: Newton-CG on the full set (models.newton), `steps` Newton iterations."""
    from . import newton
    from .optim import make_optimizer
    X, y = spirals(300, seed=seed)
    Xt, yt = spirals(300, seed=seed + 100)
    model = MLP([2, hidden, hidden, 2], "tanh", seed=seed, dtype=dtype)
    if optimizer == newton.NAME:  # full batch; a step is one Newton iteration (CG on HVPs inside)
        trace = newton.newton_cg(newton.Objective(model, X, y), max_iters=steps, tol=0.0, damping=1.0,
                                 log=lambda line: log(f"{line}  accuracy {model.accuracy(Xt, yt):.3f}"))
        return model, model.accuracy(Xt, yt), [loss for _, loss in trace.points]
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


# --- recurrent character models -------------------------------------------------------------
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
    table = G.param("emb.table", (V, E), _normal(rng, 0.1))
    if lstm:
        def forget_bias_one(shape):
            b = np.zeros(shape)
            b[1] = 1.0  # forget-gate bias 1: remember by default
            return b
        cell = {"W": G.param("cell.W", (E + H, 4, H), _normal(rng, 1 / np.sqrt(E + H))),
                "b": G.param("cell.b", (4, H), forget_bias_one)}
    else:
        cell = {"Wxh": G.param("cell.Wxh", (E, H), _normal(rng, 1 / np.sqrt(E))),
                "Whh": G.param("cell.Whh", (H, H), _normal(rng, 1 / np.sqrt(H))),
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
    logits = G.layer("linear", "head", x=hs, W=G.param("head.W", (H, V), _normal(rng, 1 / np.sqrt(H))),
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


def sgns_layer():
    if "d" not in _SGNS:
        _SGNS["d"] = derive.define("sgns_loss", sgns_loss)
    return _SGNS["d"]


def word2vec_graph(n_words, dim, dtype, store, rng, N, K, loss=True) -> ModelGraph:
    """Input vectors of the centre words, output vectors of the context words and of K negatives
    each, scored by `sgns_loss`; the output table is read twice and its gradients add."""
    G = ModelGraph("word2vec", dtype, store)
    inp = G.param("inp.table", (n_words, dim), _normal(rng, 0.5 / dim))
    out = G.param("out.table", (n_words, dim), _normal(rng, 0.5 / dim))
    v = G.layer("embedding", "centre", ids=G.input("centre", (N,), integer=True), table=inp)
    u = G.layer("embedding", "context", ids=G.input("context", (N,), integer=True), table=out)
    w = G.layer("embedding", "negatives", ids=G.input("negatives", (N * K,), integer=True), table=out)
    G.loss(G.layer(sgns_layer(), "sgns", v=v, u=u, w=G.view(w, (N, K, dim))))
    return G


class Word2Vec(GraphModel):
    def __init__(self, n_words, dim=64, seed=0, dtype="float32"):
        self.n_words, self.dim = n_words, dim
        super().__init__(dtype, seed)
        self.declare((1, 1))

    def build(self, store, rng, N, K, loss=True):
        return word2vec_graph(self.n_words, self.dim, self.dtype, store, rng, N, K)

    def forward(self, centre, context, negatives):
        negatives = np.asarray(negatives)
        N, K = negatives.shape
        return self.run((N, K), {"centre": centre, "context": context, "negatives": negatives.reshape(-1)},
                        loss=True)

    def neighbours(self, i, k=5):
        """The k words nearest to word i by cosine similarity of the input vectors."""
        E = self._params["inp.table"].data.astype(np.float64)
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
        from .sample import default_prompt, generate
        model, vocab = task.model, task.data.vocab

        def fn(ids):
            return model(np.asarray(ids, dtype=np.int64)[None, -256:])[0][0, -1]
        ids = generate(model, vocab.encode(default_prompt(vocab)), min(a.sample_tokens, 200), 0.8, None, seed,
                       logits_fn=fn)
        print("--- sample ---")
        print(vocab.decode(ids[1:]))
    return 0


__all__ = ["MLP", "mlp_graph", "train_mlp", "char_rnn_graph", "word2vec_graph", "CharRNN", "CharRNNTask", "Word2Vec",
           "train_word2vec", "sgns_loss", "train_cli", "char_rnn_sampler"]
