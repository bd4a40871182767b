"""Training tasks: the model-specific parts of a run (see models.trainer.Task)."""

from __future__ import annotations

import numpy as np

from .data import CharData, CharVocab
from .gpt import GPT, GPTConfig
from .trainer import Task, rng_state, set_rng_state


class GPTTask(Task):
    """Next-character prediction with a GPT on random windows of the train split."""

    kind = "gpt"
    # AdamW's weight decay in the GPT recipe of `symgrad train gpt` (nanoGPT's; the optimizer's
    # own default, 0.01, is PyTorch's): applied to every parameter, embeddings and norms included
    weight_decay = 0.1

    def __init__(self, model_cfg: GPTConfig, text: str, batch_size=12, seed=0, eval_iters=20):
        self.data = CharData(text, model_cfg.block_size)
        model_cfg.vocab_size = len(self.data.vocab)
        self.cfg = model_cfg
        self.model = GPT(model_cfg, seed=seed)
        self.batch_size, self.seed, self.eval_iters = batch_size, seed, eval_iters
        self.rng = np.random.default_rng(seed + 1)
        self.tokens_per_step = batch_size * model_cfg.block_size  # of the global batch
        self.rows = slice(None)  # the rows of every batch this process computes (set_rows)

    def set_rows(self, lo: int, hi: int):
        """Data-parallel training (models.distributed): compute rows lo:hi of every global batch of
        `batch_size`; the batches drawn, and so the RNG, stay those of the one-process run."""
        self.rows = slice(lo, hi)

    def train_step(self) -> float:
        x, y = self.data.batch("train", self.batch_size, self.rng)
        _, loss = self.model(x[self.rows], y[self.rows])
        if np.isfinite(loss):
            self.model.backward()
        else:
            self.model.clear()
        return loss

    def val_loss(self) -> float:
        """Mean loss over `eval_iters` val batches drawn by a fixed seed (the same batches each time)."""
        rng = np.random.default_rng(self.seed + 2)
        self.model.eval()
        try:
            batches = (self.data.batch("val", self.batch_size, rng) for _ in range(self.eval_iters))
            return float(np.mean([self.model(x[self.rows], y[self.rows])[1] for x, y in batches]))
        finally:
            self.model.train()

    def sharpness(self) -> float:
        """The top Hessian eigenvalue of the loss on one fixed training batch (the same batch
        at every measurement, drawn by the seed), by Lanczos over whole-model HVPs."""
        from .sharpness import sharpness
        x, y = self.data.batch("train", self.batch_size, np.random.default_rng(self.seed + 3))
        return sharpness(self.model, x, y)[0]

    def rng_state(self):
        return rng_state(self.rng)

    def set_rng_state(self, state):
        set_rng_state(self.rng, state)

    def config(self):
        return {"model": self.cfg.as_dict(), "batch_size": self.batch_size, "seed": self.seed,
                "vocab": self.data.vocab.chars}

    @staticmethod
    def model_from_config(config: dict) -> tuple[GPT, CharVocab]:
        return GPT(GPTConfig(**config["model"]), seed=config.get("seed", 0)), CharVocab(config["vocab"])
