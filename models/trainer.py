"""The training loop: progress, periodic validation, atomic checkpoints, exact resume, Ctrl-C,
and a stop on a non-finite loss.

A `Task` supplies the model-specific parts: one training step's loss and gradients, a validation
loss, and what beyond parameters and optimizer state its checkpoint must hold (the batch RNG,
a recurrent model's carried state). `Trainer.run` is the same for every model.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, distributed


class TrainingStopped(RuntimeError):
    """Training stopped on a non-finite loss; the message names the step and the kept checkpoint."""


@dataclass
class RunState:
    step: int = 0
    history: list = field(default_factory=list)  # [step, train loss] per step
    val_history: list = field(default_factory=list)  # [step, val loss]
    sharpness_history: list = field(default_factory=list)  # [step, top Hessian eigenvalue]


class Task:
    """Interface; see models.tasks for the implementations."""

    kind = "task"
    tokens_per_step = 1

    def train_step(self) -> float:  # forward + backward on the next batch; returns the loss
        raise NotImplementedError

    def val_loss(self) -> float:
        raise NotImplementedError

    def sharpness(self) -> float:  # the top Hessian eigenvalue on a fixed batch (models.sharpness)
        raise NotImplementedError(f"{self.kind}: sharpness is not measured for this task")

    def rng_state(self) -> dict:
        raise NotImplementedError

    def set_rng_state(self, state: dict):
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {}

    def set_extra_state(self, extra: dict):
        pass

    def config(self) -> dict:
        raise NotImplementedError


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict):
    rng.bit_generator.state = state


class Trainer:
    def __init__(self, task: Task, model, optimizer, out_dir, eval_interval=250, log=print,
                 progress=True, world=None, sharpness_every=0):
        self.task, self.model, self.opt = task, model, optimizer
        # data-parallel under `mpirun -n K` (models.distributed); one process: hooks that do nothing
        self.world = distributed.world() if world is None else world
        self.out_dir = Path(out_dir)
        self.ckpt_path = self.out_dir / "ckpt.npz"
        checkpoint.check_target(self.ckpt_path)  # before training, not at the first save
        self.eval_interval = eval_interval
        self.sharpness_every = sharpness_every  # 0: never
        self.state = RunState()
        self.log = log if self.world.root else (lambda *a, **k: None)
        self.progress = progress and self.world.root
        self.last_saved_step = None
        self._interrupted = False
        self._sigint = False  # Ctrl-C seen here; under MPI the ranks stop when one has seen it

    # --- checkpoints ---------------------------------------------------------------
    def save(self):
        """Write the checkpoint (rank 0 alone, after the ranks' checksums agree)."""
        self.world.check_replicas(self)
        self.world.on_root(self._write)
        self.last_saved_step = self.state.step

    def _write(self):
        meta = {"kind": self.task.kind, "config": self.task.config(), "step": self.state.step,
                "rng": self.task.rng_state(), "history": self.state.history,
                "val_history": self.state.val_history, "sharpness_history": self.state.sharpness_history}
        try:
            checkpoint.save(self.ckpt_path, meta, self.model.state_dict(), self.opt.state_dict(),
                            self.task.extra_state())
        except checkpoint.NonFiniteError as e:
            raise TrainingStopped(f"step {self.state.step}: {e}; training stopped "
                                  f"({self._kept()}); try a lower learning rate") from None
        except (checkpoint.CheckpointError, OSError) as e:
            raise TrainingStopped(f"step {self.state.step}: cannot write {self.ckpt_path}: {e}; "
                                  f"training stopped ({self._kept()})") from None

    def _kept(self) -> str:
        if self.last_saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint (step {self.last_saved_step}) is kept at {self.ckpt_path}"

    def restore(self, ck: dict):
        """Continue the run saved in `ck`; later saves go back to the file it was read from (not
        to a sibling ckpt.npz, which may be another run's)."""
        meta = ck["meta"]
        if ck["opt_state"] is None:
            raise checkpoint.CheckpointError(f"checkpoint {ck['path']} holds no optimizer state")
        if "rng" not in meta:
            raise checkpoint.CheckpointError(f"corrupt checkpoint {ck['path']}: its meta has no rng")
        checkpoint.check_target(ck["path"])
        self.ckpt_path = Path(ck["path"])
        self.model.load_state_dict(ck["params"])
        self.opt.load_state_dict(ck["opt_state"])
        self.task.set_rng_state(meta["rng"])
        self.task.set_extra_state(ck["extra"])
        self.state = RunState(meta["step"], meta.get("history", []), meta.get("val_history", []),
                              meta.get("sharpness_history", []))
        self.last_saved_step = meta["step"]

    # --- loop ----------------------------------------------------------------------
    def _on_sigint(self, signum, frame):
        if self._interrupted or self._sigint:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._sigint = True
        if self.world.size == 1:
            self._interrupted = True

    def evaluate(self):
        v = self.world.average(self.task.val_loss())
        self.state.val_history.append([self.state.step, v])
        return v

    def run(self, steps: int) -> RunState:
        """Train until `steps` total steps (counting those before a resume)."""
        from tqdm import tqdm

        self.world.start(self, steps)  # MPI: the ranks agree on the run and take rank 0's state
        old = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        start = self.state.step
        bar = tqdm(total=steps, initial=start, disable=not self.progress, unit="step",
                   dynamic_ncols=True, file=sys.stderr)
        t0, tokens = time.perf_counter(), 0
        try:
            while self.state.step < steps:
                self.model.zero_grad()
                loss = self.task.train_step()
                loss, stop = self.world.reduce(loss, self._sigint)  # MPI: the one gradient allreduce
                self._interrupted = self._interrupted or stop
                if not math.isfinite(loss):
                    raise TrainingStopped(f"loss became {loss} at step {self.state.step + 1}; training "
                                          f"stopped ({self._kept()}); try a lower learning rate")
                self.opt.step()
                self.state.step += 1
                self.state.history.append([self.state.step, loss])
                tokens += self.task.tokens_per_step
                tps = tokens / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"loss {loss:.4f}, {tps:,.0f} tok/s", refresh=False)
                bar.update(1)
                s = self.state.step
                if self.sharpness_every and (s % self.sharpness_every == 0 or s == steps):
                    lam = self.task.sharpness()  # every rank: the same batch and parameters
                    self.state.sharpness_history.append([s, lam])
                    if self.world.root:
                        bar.write(f"step {s:6d}  sharpness {lam:.4g}")
                if s % self.eval_interval == 0 or s == steps:
                    v = self.evaluate()
                    if self.world.root:
                        bar.write(f"step {s:6d}  train loss {loss:.4f}  val loss {v:.4f}")
                    if not math.isfinite(v):  # the parameters may be finite, the model is not
                        raise TrainingStopped(f"val loss became {v} at step {s}; training stopped "
                                              f"({self._kept()}); try a lower learning rate")
                    self.save()
                if self._interrupted:
                    break
        finally:
            bar.close()
            if old is not None:
                signal.signal(signal.SIGINT, old)
        if self._interrupted:
            if self.last_saved_step != self.state.step:
                self.save()
            self.log(f"interrupted at step {self.state.step}; checkpoint saved to {self.ckpt_path}")
        return self.state

    def run_for_cli(self, steps: int):
        """`run`, then the command line's exit status: None when the run finished (its val
        losses printed), 1 after a NaN/Inf stop (its message printed), 130 after Ctrl-C."""
        try:
            state = self.run(steps)
        except TrainingStopped as e:
            if self.world.root:
                print(f"symgrad train: {e}", file=sys.stderr)
            return 1
        if self._interrupted:
            return 130
        if state.val_history and self.world.root:
            print("val loss: " + ", ".join(f"{s}: {v:.3f}" for s, v in state.val_history))
        if state.sharpness_history and self.world.root:
            print("sharpness: " + ", ".join(f"{s}: {v:.4g}" for s, v in state.sharpness_history))
        if self.world.summary() is not None and self.world.root:
            print(self.world.summary())
        return None


def _main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()
