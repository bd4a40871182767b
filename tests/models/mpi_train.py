"""A data-parallel run through the Python API, for tests/models/test_mpi.py: the same script in one
process (`python -m tests.models.mpi_train OUT`) and under `mpirun -n K`. Rank 0 writes
OUT/ckpt.npz; every rank writes its final parameters and optimizer state to OUT/state.RANK.npy,
bytes as they are.

    python -m tests.models.mpi_train OUT [STEPS [BATCH [DRIFT]]]   # DRIFT=1: rank 1's parameters drift"""

import sys
from pathlib import Path

import numpy as np

from symgrad.models.data import read_text
from symgrad.models.gpt import GPTConfig
from symgrad.models.optim import AdamW
from symgrad.models.tasks import GPTTask
from symgrad.models.trainer import Trainer

# small enough to compile and run in seconds: 1 layer, 2 heads, 16 dims, block 16
CONFIG = dict(n_layer=1, n_head=2, n_embd=16, block_size=16)


class DriftingTask(GPTTask):
    """On rank 1, one parameter moves by 1e-3 at step 2: the replicas no longer agree."""

    def train_step(self):
        loss = super().train_step()
        if self.rows.start and self.model.store.flat is not None and not hasattr(self, "_drifted"):
            self.model.store.flat[0] += 1e-3
            self._drifted = True
        return loss


def main(out, steps=50, batch=12, drift=0, max_grad_norm=0.5):
    task = (DriftingTask if drift else GPTTask)(GPTConfig(**CONFIG), read_text(), batch_size=batch, seed=0)
    opt = AdamW(task.model.parameters(), lr=1e-3, wd=0.1, max_grad_norm=max_grad_norm)
    trainer = Trainer(task, task.model, opt, out, eval_interval=steps, progress=False, log=lambda *a: None)
    if drift:
        raise SystemExit(trainer.run_for_cli(steps))
    trainer.run(steps)
    state = np.concatenate([task.model.store.flat] + [opt._flat_state[s] for s in sorted(opt._flat_state)])
    np.save(Path(out) / f"state.{trainer.world.rank}.npy", state)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
