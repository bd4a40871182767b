"""Sampling from a character model: temperature, top-k, deterministic under a seed."""

from __future__ import annotations

import numpy as np

from symgrad import compiled
class SampleError(ValueError):
    """The model cannot be sampled: its next-token logits are not finite (a diverged run)."""


def default_prompt(vocab) -> str:
    """A newline when the vocabulary has one (text starts after a line break), else its first
    character: a text without newlines (one repeated character, say) has no "\n" to start from."""
    return "\n" if "\n" in vocab.chars else vocab.chars[0]


def next_token_probs(logits_row: np.ndarray, temperature: float, top_k: int | None, softmax):
    """Probabilities of the next token from one row of logits (`softmax`: the softmax layer's
    compiled kernels, applied to logits / T)."""
    z = np.asarray(logits_row, dtype=np.float64) / temperature
    if top_k is not None and 0 < top_k < z.size:
        cut = np.partition(z, -top_k)[-top_k]
        z = np.where(z < cut, z.max() - 1e4, z)  # exp underflows to exactly 0; values stay finite
    p = softmax.forward(x=z[None, :].astype(softmax.dtype))["s"][0].astype(np.float64)
    if not np.isfinite(p).all():
        raise SampleError("the model's next-token probabilities are not finite (NaN or inf in "
                          "its logits): the checkpoint is from a diverged run")
    return p / p.sum()


def generate(model, prompt_ids, n_tokens: int, temperature=1.0, top_k=None, seed=0,
             logits_fn=None) -> list[int]:
    """Extend `prompt_ids` by `n_tokens` tokens. `logits_fn(ids)` gives the next-token logits
    (default: the model's `next_logits`, a GPT's last position over its block)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    ids = list(int(i) for i in prompt_ids)
    if logits_fn is None:
        logits_fn = model.next_logits
    softmaxes = {}
    try:
        for _ in range(n_tokens):
            logits = logits_fn(ids)
            dt = np.dtype(logits.dtype).name
            if dt not in softmaxes:
                softmaxes[dt] = compiled.kernels("softmax", dt)
            p = next_token_probs(logits, temperature, top_k, softmaxes[dt])
            ids.append(int(rng.choice(p.size, p=p)))
    finally:
        model.train(was_training)
    return ids
