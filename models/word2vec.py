"""Word2Vec: skip-gram with negative sampling (`symgrad train word2vec`).

Input and output word vectors are embedding tables of a graph declared forward only
(`models.graph`); the loss is a layer defined here by its forward expression only (`sgns_loss`),
its gradient derived by derive/ like every other.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

import numpy as np
from sympy import exp, log

from symgrad import derive
from .data import DataError
from .graph import ModelGraph, normal
from .module import GraphModel


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


@functools.cache
def sgns_layer():
    """`sgns_loss` derived (once a process)."""
    return derive.define("sgns_loss", sgns_loss)


def word2vec_graph(n_words, dim, dtype, store, rng, N, K) -> ModelGraph:
    """Input vectors of the centre words, output vectors of the context words and of K negatives
    each, scored by `sgns_loss`; the output table is read twice and its gradients add."""
    G = ModelGraph("word2vec", dtype, store)
    inp = G.param("inp.table", (n_words, dim), normal(rng, 0.5 / dim))
    out = G.param("out.table", (n_words, dim), normal(rng, 0.5 / dim))
    v = G.layer("embedding", "centre", ids=G.input("centre", (N,), integer=True), table=inp)
    u = G.layer("embedding", "context", ids=G.input("context", (N,), integer=True), table=out)
    w = G.layer("embedding", "negatives", ids=G.input("negatives", (N * K,), integer=True), table=out)
    G.loss(G.layer(sgns_layer(), "sgns", v=v, u=u, w=G.view(w, (N, K, dim))))
    return G


class Word2Vec(GraphModel):
    """Input and output vectors of `n_words` words, `dim` each, scored by `sgns_loss` (the graph
    always ends in the loss: a step is a training step)."""

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


__all__ = ["Word2Vec", "word2vec_graph", "sgns_loss", "sgns_layer", "word_corpus", "subsample", "train_word2vec"]
