"""The same GPT in PyTorch (eager), for the cross-checks and `symgrad bench train`.

Weights are copied from a `models.gpt.GPT` (W stored (in, out) here as there), so both models
compute the same function; torch is imported only when this module is.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class _Linear(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.W = nn.Parameter(torch.empty(n_in, n_out))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.b, x.reshape(-1, x.shape[-1]), self.W).reshape(*x.shape[:-1], -1)


class _Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg.n_embd
        self.n_head = cfg.n_head
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = _Linear(C, 3 * C)
        self.attn_proj = _Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.c_fc = _Linear(C, 4 * C)
        self.mlp_proj = _Linear(4 * C, C)
        self.approx = "tanh" if cfg.gelu == "gelu" else "none"

    def forward(self, x):
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (a.view(B, T, H, C // H).transpose(1, 2) for a in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=self.approx))


class TorchGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.lm_head = _Linear(cfg.n_embd, cfg.vocab_size)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for blk in self.blocks:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def name_map(n_layer):
    """symgrad parameter name -> torch parameter name."""
    m = {"wte.table": "wte.weight", "wpe.table": "wpe.weight", "ln_f.gamma": "ln_f.weight",
         "ln_f.beta": "ln_f.bias", "lm_head.W": "lm_head.W", "lm_head.b": "lm_head.b"}
    for i in range(n_layer):
        s, t = f"blocks.{i}.", f"blocks.{i}."
        m.update({s + "ln_1.gamma": t + "ln_1.weight", s + "ln_1.beta": t + "ln_1.bias",
                  s + "ln_2.gamma": t + "ln_2.weight", s + "ln_2.beta": t + "ln_2.bias",
                  s + "attn.c_attn.W": t + "c_attn.W", s + "attn.c_attn.b": t + "c_attn.b",
                  s + "attn.c_proj.W": t + "attn_proj.W", s + "attn.c_proj.b": t + "attn_proj.b",
                  s + "mlp.c_fc.W": t + "c_fc.W", s + "mlp.c_fc.b": t + "c_fc.b",
                  s + "mlp.c_proj.W": t + "mlp_proj.W", s + "mlp.c_proj.b": t + "mlp_proj.b"})
    return m


def from_weights(cfg, weights: dict) -> TorchGPT:
    """A TorchGPT of config `cfg` holding a copy of `weights` (symgrad parameter name -> array)."""
    tm = TorchGPT(cfg).to(getattr(torch, cfg.dtype))
    names = name_map(cfg.n_layer)
    params = dict(tm.named_parameters())
    with torch.no_grad():
        for n, w in weights.items():
            params[names[n]].copy_(torch.from_numpy(np.array(w)))
    return tm


def from_symgrad(model) -> TorchGPT:
    """A TorchGPT with `model`'s config and a copy of its weights (dtype kept)."""
    return from_weights(model.config, {n: p.data for n, p in model.named_parameters()})


def torch_grads(model, tm) -> dict:
    """torch's gradients keyed by symgrad parameter names."""
    names = name_map(model.config.n_layer)
    params = dict(tm.named_parameters())
    return {n: params[names[n]].grad.detach().numpy() for n, _ in model.named_parameters()}


# --- the PyTorch peers of `symgrad bench train --peer` ----------------------------------------
PEERS = {
    "eager": "eager (SDPA), AdamW foreach",
    "fused": "eager (SDPA), AdamW fused",
    "compile": "torch.compile (SDPA, default mode), AdamW foreach",
}


def make_peer(cfg, weights: dict, kind: str, lr: float = 1e-3):
    """One PyTorch peer of a symgrad GPT of config `cfg`: (step, description), on its own copy of
    `weights` (symgrad parameter name -> array).

    `step(idx, targets)` is one training step: zero_grad, forward + loss, backward, AdamW step
    (weight decay 0, as the bench's symgrad side). "compile" wraps the module in `torch.compile`:
    its first calls compile (seconds to minutes); warm it up before timing it."""
    if kind not in PEERS:
        raise ValueError(f"unknown peer '{kind}'; one of: {', '.join(PEERS)}")
    tm = from_weights(cfg, weights)
    opt_kw = {"fused": True} if kind == "fused" else {"foreach": True}
    opt = torch.optim.AdamW(tm.parameters(), lr=lr, weight_decay=0.0, **opt_kw)
    fwd = torch.compile(tm) if kind == "compile" else tm

    def step(idx, targets):
        opt.zero_grad(set_to_none=True)
        fwd(idx, targets).backward()
        opt.step()

    return step, f"{torch.__version__} {PEERS[kind]}"


__all__ = ["TorchGPT", "from_weights", "from_symgrad", "torch_grads", "name_map", "math", "PEERS", "make_peer"]
