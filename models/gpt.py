"""A GPT-style character transformer (nanoGPT's architecture, dropout 0).

    tokens (B, T) -> wte[tokens] + wpe[0..T-1]
                  -> n_layer x Block: x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
                  -> ln_f -> lm_head -> logits (B, T, V) -> cross-entropy

attn: one linear to q, k, v (C -> 3C), heads as (B*H, T, D) views, causal attention, a linear
projection (C -> C). mlp: linear C -> 4C, GELU, linear 4C -> C. `backward()` runs the layers'
backward kernels in reverse order; where a value is used twice (the residual stream) the two
gradients are added.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .layers import CausalAttention, CrossEntropy, Elementwise, Embedding, KernelLayer, LayerNorm, Linear
from .module import Module


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


class Residual(KernelLayer):
    """y = a + b through the residual kernel; backward gives (da, db)."""

    def __init__(self, dtype):
        super().__init__("residual", dtype)

    def forward(self, a, b):
        C = a.shape[-1]
        return self._forward(a=a.reshape(-1, C), b=b.reshape(-1, C))["y"].reshape(a.shape)

    def backward(self, g):
        d = self._backward(g=g.reshape(-1, g.shape[-1]))
        return d["a"].reshape(g.shape), d["b"].reshape(g.shape)


class SelfAttention(Module):
    def __init__(self, cfg: GPTConfig, rng):
        C, dt = cfg.n_embd, cfg.dtype
        self.n_head = cfg.n_head
        self.c_attn = Linear(C, 3 * C, rng, dt, std=0.02)
        self.attn = CausalAttention(dt)
        self.c_proj = Linear(C, C, rng, dt, std=0.02 / np.sqrt(2 * cfg.n_layer))

    def _heads(self, a, B, T):
        """(B, T, C) -> (B*H, T, D)"""
        H = self.n_head
        return np.ascontiguousarray(a.reshape(B, T, H, -1).transpose(0, 2, 1, 3)).reshape(B * H, T, -1)

    def _merge(self, a, B, T):
        """(B*H, T, D) -> (B, T, C)"""
        H = self.n_head
        return np.ascontiguousarray(a.reshape(B, H, T, -1).transpose(0, 2, 1, 3)).reshape(B, T, -1)

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.c_attn(x)
        q, k, v = (self._heads(qkv[..., i * C:(i + 1) * C], B, T) for i in range(3))
        y = self._merge(self.attn(q, k, v), B, T)
        return self.c_proj(y)

    def backward(self, g):
        B, T, C = g.shape
        dy = self._heads(self.c_proj.backward(g), B, T)
        dq, dk, dv = self.attn.backward(dy)
        dqkv = np.concatenate([self._merge(d, B, T) for d in (dq, dk, dv)], axis=-1)
        return self.c_attn.backward(dqkv)


class MLP(Module):
    def __init__(self, cfg: GPTConfig, rng):
        C, dt = cfg.n_embd, cfg.dtype
        self.c_fc = Linear(C, 4 * C, rng, dt, std=0.02)
        self.act = Elementwise(cfg.gelu, dt)
        self.c_proj = Linear(4 * C, C, rng, dt, std=0.02 / np.sqrt(2 * cfg.n_layer))

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))

    def backward(self, g):
        return self.c_fc.backward(self.act.backward(self.c_proj.backward(g)))


class Block(Module):
    def __init__(self, cfg: GPTConfig, rng):
        dt = cfg.dtype
        self.ln_1 = LayerNorm(cfg.n_embd, dt)
        self.attn = SelfAttention(cfg, rng)
        self.res_1 = Residual(dt)
        self.ln_2 = LayerNorm(cfg.n_embd, dt)
        self.mlp = MLP(cfg, rng)
        self.res_2 = Residual(dt)

    def forward(self, x):
        x = self.res_1(x, self.attn(self.ln_1(x)))
        return self.res_2(x, self.mlp(self.ln_2(x)))

    def backward(self, g):
        g_skip, g_mlp = self.res_2.backward(g)
        g = g_skip + self.ln_2.backward(self.mlp.backward(g_mlp))
        g_skip, g_attn = self.res_1.backward(g)
        return g_skip + self.ln_1.backward(self.attn.backward(g_attn))


class GPT(Module):
    def __init__(self, cfg: GPTConfig, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.config = cfg
        dt = cfg.dtype
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd, rng, dt, std=0.02)
        self.wpe = Embedding(cfg.block_size, cfg.n_embd, rng, dt, std=0.02)
        self.emb = Residual(dt)
        self.blocks = [Block(cfg, rng) for _ in range(cfg.n_layer)]
        self.ln_f = LayerNorm(cfg.n_embd, dt)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, rng, dt, std=0.02)
        self.loss_fn = CrossEntropy(dt)

    def forward(self, idx, targets=None):
        """Logits (B, T, V); with targets, (logits, mean cross-entropy)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        tok = self.wte(idx)
        pos = self.wpe(np.broadcast_to(np.arange(T), (B, T)))
        x = self.emb(tok, pos)
        for blk in self.blocks:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return logits, self.loss_fn(logits, targets)

    def backward(self):
        """Gradients of the last forward's loss into every Param.grad (added to what is there)."""
        g = self.loss_fn.backward(1.0)
        g = self.ln_f.backward(self.lm_head.backward(g))
        for blk in reversed(self.blocks):
            g = blk.backward(g)
        g_tok, g_pos = self.emb.backward(g)
        self.wpe.backward(g_pos)
        self.wte.backward(g_tok)

    def clear(self):
        for m in self.modules():
            if isinstance(m, KernelLayer):
                m.clear()
