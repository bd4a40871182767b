"""A GPT-style character transformer (nanoGPT's architecture, dropout 0), declared as a graph.

    tokens (B, T) -> wte[tokens] + wpe[0..T-1]
                  -> n_layer x Block: x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
                  -> ln_f -> lm_head -> logits (B, T, V) -> cross-entropy

attn: one linear to q, k, v (C -> 3C); its (B T, 3C) output viewed as (B, T, 3, H, D) is unbound
along the 3 into q, k, v, each (B, T, H, D) and a strided view of it (no copy); causal attention
per head on that layout (`attention_heads`: a head's rows q[b, :, h, :] are read in place, the
output written in the same layout), which viewed as (B T, C) rows is the input of the projection
(C -> C). The head split and merge are views: their gradients are the same views of the
gradients, each of dq, dk, dv written by attention's backward where it lies in d(qkv). mlp is
linear C -> 4C, GELU, linear 4C -> C. `gpt_graph` is the whole model, forward only; its training
step is planned (`models.plan`) and printed (`models.step`), and the backward, the residual
stream's sums included, comes from that graph.

Measured (2026-12-06, 2-vCPU AMD EPYC VM, one thread, the reference batch): the heads as views
save the two copies a layer did before, split_heads (0.18 ms forward, 0.25 backward at batch 6)
and merge_heads (0.07, 0.04); the derived `multihead_attention` layer, projections included,
stays slower than this split form (its 4-D loops and three narrow projections; 6.4 ms against
3.5 per block, measured 2026-12-01).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .graph import ModelGraph
from .module import GraphModel


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    gelu: str = "gelu_erf"
    dtype: str = "float32"

    def as_dict(self):
        return asdict(self)


def gpt_graph(cfg: GPTConfig, store, rng, B: int, T: int, loss: bool = True) -> ModelGraph:
    """The GPT at batch B and sequence length T (parameters from `store`, drawn from `rng` on
    first use); with `loss`, the mean cross-entropy of `targets` is the loss."""
    C, H, L, V = cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.vocab_size
    N, D = B * T, cfg.n_embd // cfg.n_head
    G = ModelGraph("gpt", cfg.dtype, store)

    def normal(std):
        return lambda shape: rng.standard_normal(shape) * std

    def ones(shape):
        return np.ones(shape)

    proj = normal(0.02 / np.sqrt(2 * L))  # GPT-2's scaled init of the projections into the stream
    idx = G.input("idx", (N,), integer=True)
    pos = G.input("pos", (N,), integer=True)
    tok = G.layer("embedding", "wte", ids=idx, table=G.param("wte.table", (V, C), normal(0.02)))
    at = G.layer("embedding", "wpe", ids=pos, table=G.param("wpe.table", (cfg.block_size, C), normal(0.02)))
    x = G.layer("residual", "emb", a=tok, b=at)
    for i in range(L):
        p = f"blocks.{i}."

        def ln(name, h):
            return G.layer("layernorm", p + name, x=h, gamma=G.param(p + name + ".gamma", (C,), ones),
                           beta=G.param(p + name + ".beta", (C,)), eps=1e-5)

        def linear(name, h, n_in, n_out, init):
            return G.layer("linear", p + name, x=h, W=G.param(p + name + ".W", (n_in, n_out), init),
                           b=G.param(p + name + ".b", (n_out,)))

        qkv = linear("attn.c_attn", ln("ln_1", x), C, 3 * C, normal(0.02))
        q, k, v = G.unbind(G.view(qkv, (B, T, 3, H, D)), 2, [p + "attn." + n for n in "qkv"])
        y = G.layer("attention_heads", p + "attn.attn", q=q, k=k, v=v)
        x = G.layer("residual", p + "res_1", a=x, b=linear("attn.c_proj", G.view(y, (N, C)), C, C, proj))
        h = linear("mlp.c_fc", ln("ln_2", x), C, 4 * C, normal(0.02))
        h = G.layer(cfg.gelu, p + "mlp.act", x=h)
        x = G.layer("residual", p + "res_2", a=x, b=linear("mlp.c_proj", h, 4 * C, C, proj))
    h = G.layer("layernorm", "ln_f", x=x, gamma=G.param("ln_f.gamma", (C,), ones),
                beta=G.param("ln_f.beta", (C,)), eps=1e-5)
    logits = G.layer("linear", "lm_head", x=h, W=G.param("lm_head.W", (C, V), normal(0.02)),
                     b=G.param("lm_head.b", (V,)))
    G.result("logits", logits)
    if loss:
        targets = G.input("targets", (N,), integer=True)
        G.loss(G.layer("cross_entropy", "loss", logits=logits, targets=targets))
    return G


class GPT(GraphModel):
    splits_by_rows = True  # sequences are independent, the loss is the mean over their tokens

    def __init__(self, cfg: GPTConfig, seed: int = 0):
        self.config = cfg
        super().__init__(cfg.dtype, seed)
        self.declare((1, cfg.block_size))

    def build(self, store, rng, B, T, loss=True):
        return gpt_graph(self.config, store, rng, B, T, loss)

    def batch(self, idx, targets=None):
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"GPT input must be (batch, time) token ids, got shape {idx.shape}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        inputs = {"idx": idx.reshape(-1), "pos": np.tile(np.arange(T), B)}
        if targets is not None:
            inputs["targets"] = np.asarray(targets).reshape(-1)
        return (B, T), inputs

    def forward(self, idx, targets=None):
        """Logits (B, T, V); with targets, (logits, mean cross-entropy)."""
        (B, T), inputs = self.batch(idx, targets)
        loss = self.run((B, T), inputs, loss=targets is not None)
        logits = self.result("logits").reshape(B, T, -1).copy()
        return logits if targets is None else (logits, loss)

    def next_logits(self, ids) -> np.ndarray:
        """Next-token logits after the last `block_size` ids: one forward at the full block (the
        tail padded; positions attend causally, so padding after the last id changes nothing
        before it), so sampling runs one planned step whatever the context length."""
        bs = self.config.block_size
        ctx = np.asarray(list(ids)[-bs:], dtype=np.int64)
        t = ctx.size
        pad = np.zeros(bs, np.int64)
        pad[:t] = ctx
        self.run((1, bs), {"idx": pad, "pos": np.arange(bs)}, loss=False)
        return self.result("logits")[t - 1].copy()
