"""Data-parallel training over MPI (mpi4py on Open MPI): one Allreduce of the flat gradient buffer a step.

    mpirun -n 2 symgrad train gpt --batch-size 12        # 6 rows of every batch on each rank

Every rank holds the whole model and draws the same global batch from the same RNG (so the run
is the one-process run, and a checkpoint resumes under any number of ranks); rank r computes its
rows of it, `lo:hi`. The loss is a mean, so each rank scales its gradient by its share of the
rows, w = (hi - lo) / B, and one in-place float32 `Allreduce(SUM)` of the model's flat gradient
buffer leaves on every rank the gradient of the global batch's mean loss (equal shares: the mean
of the per-rank gradients). The scalars a step needs everywhere (the weighted loss, whether a
rank was interrupted) travel in a small non-blocking allreduce that overlaps the big one. Then
the optimizer runs as in one process (clipping's norm is taken of the reduced gradient) on
identical inputs on every rank, so the parameters stay bit-identical; a checksum of parameters
and optimizer state is compared at every checkpoint, and only rank 0 prints and writes.

At start the ranks compare their configurations (model, batch, optimizer, steps, data, resumed
step) and refuse a mismatch in one line; then rank 0's parameters, optimizer state and batch RNG
are broadcast. A rank that dies takes the job down: Open MPI's `mpirun` kills the others and
names the rank; a rank that fails alone after the start calls `MPI_Abort` (a plain exit would
leave the others waiting in the next collective forever).

mpi4py is imported only when the process was started by an MPI launcher with more than one rank
(`OMPI_COMM_WORLD_SIZE` / `PMI_SIZE`); otherwise `world()` is a `Local` world whose hooks do
nothing, and nothing here needs mpi4py.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib

import numpy as np


WARMUP = 3  # steps left out of the timing summary


class DistributedError(RuntimeError):
    """Data-parallel training cannot start (one line; the same on every rank)."""


def launched_size() -> int:
    """The number of ranks an MPI launcher started (1 when not started by one)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        try:
            return max(1, int(os.environ[var]))
        except (KeyError, ValueError):
            continue
    return 1


_WORLD: list = []


def world() -> "Local":
    """This process's world: `MPIWorld` under `mpirun -n K` (K > 1), else `Local` (cached)."""
    if not _WORLD:
        k = launched_size()
        if k == 1:
            _WORLD.append(Local())
        else:
            try:
                from mpi4py import MPI  # initialises MPI
            except ImportError as e:
                raise DistributedError(f"started by an MPI launcher with {k} ranks, but mpi4py cannot be "
                                       f"imported ({e}); pip install -e '.[mpi]'") from None
            _WORLD.append(MPIWorld(MPI))
    return _WORLD[0]


class Local:
    """One process: every hook is the identity (`Trainer` calls them unconditionally)."""

    rank, size, root, started = 0, 1, True, False

    def start(self, trainer, steps):
        self.started = True

    def reduce(self, loss: float, interrupted: bool) -> tuple[float, bool]:
        return loss, interrupted

    def average(self, value: float) -> float:
        return value

    def check_replicas(self, trainer):
        pass

    def on_root(self, fn):
        return fn()

    def summary(self) -> str | None:
        return None

    def fail(self, message: str) -> str | None:
        return message

    def abort(self, rc: int):
        raise SystemExit(rc)


class MPIWorld(Local):
    """COMM_WORLD of a run under mpirun; see the module docstring for the protocol."""

    def __init__(self, MPI):
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.root = self.rank == 0
        self.started = False
        self.weight = 1.0 / self.size
        self.lo = self.hi = self.batch = None
        self.reduce_s, self.step_s, self.steps = 0.0, 0.0, 0
        self._t_step, self._calls = None, 0
        self._status = np.zeros(2)
        self._cap_threads()

    def _cap_threads(self):
        """Ranks on one machine share its cores: each runs on cores // ranks-here threads at most
        (mpirun binds a rank to one core when ranks <= cores; then its affinity says 1 already)."""
        from . import threads
        here = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED).Get_size()
        share = max(1, (os.cpu_count() or 1) // here)
        if threads.most() > share:
            threads.set_most(share)

    # --- start -------------------------------------------------------------------------
    def start(self, trainer, steps):
        """Agree on the configuration, take rank 0's state, and split the batch; raises
        DistributedError (the same line on every rank) when the ranks disagree."""
        task, opt = trainer.task, trainer.opt
        B, error = getattr(task, "batch_size", 0), None
        if not hasattr(task, "set_rows"):
            error = (f"data-parallel training is not implemented for '{task.kind}' (it cannot split its "
                     f"batch); run it in one process")
        elif B < self.size:
            error = (f"the global batch ({B}) is smaller than the number of ranks ({self.size}); pass "
                     f"--batch-size {self.size} or more, or start fewer ranks")
        self._gather_errors(error, None if error else _fingerprint(trainer, steps))
        for buf in _state_buffers(trainer.model, opt):
            self.comm.Bcast(buf, root=0)
        task.set_rng_state(self.comm.bcast(task.rng_state(), root=0))
        self.lo, self.hi = _rows(B, self.size, self.rank)
        self.batch, self.weight = B, (self.hi - self.lo) / B
        task.set_rows(self.lo, self.hi)
        self._grad = _grad_buffer(opt)
        self.started = True
        self._t_step = time.perf_counter()

    def _gather_errors(self, error, fingerprint=None):
        """Every rank brings its error (or None) and fingerprint; any error, or two fingerprints
        that differ, is raised on every rank as one line."""
        got = self.comm.allgather((error, fingerprint))
        errors = [(r, e) for r, (e, _) in enumerate(got) if e is not None]
        if errors:
            msgs = {e for _, e in errors}
            if len(msgs) == 1 and len(errors) == self.size:
                raise DistributedError(errors[0][1])
            raise DistributedError("; ".join(f"rank {r}: {e}" for r, e in errors))
        fps = [f for _, f in got]
        for r, f in enumerate(fps):
            if f != fps[0]:
                key, a, b = _first_difference(fps[0], f)
                raise DistributedError(f"the ranks were started with different configurations: rank {r} has "
                                       f"{key}={b}, rank 0 {key}={a}; start every rank with the same arguments")

    def fail(self, message):
        """A rank's error before training (bad input): before the start the ranks agree on it and
        rank 0 gets the one line to print (the others None); after it, this rank aborts the job."""
        if self.started:
            print(f"rank {self.rank}: {message}", file=sys.stderr, flush=True)
            self.abort(2)
        try:
            self._gather_errors(message)
        except DistributedError as e:
            return str(e) if self.root else None
        return message if self.root else None  # unreachable: this rank's error is in the gather

    def abort(self, rc: int):
        """Stop every rank of the job now (a lone failure must not leave the others waiting)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(rc)

    # --- every step ----------------------------------------------------------------------
    def reduce(self, loss, interrupted):
        """This rank's share of the gradient summed over the ranks, in place in the flat buffer;
        the global batch's mean loss, and whether any rank was interrupted."""
        t0 = time.perf_counter()
        MPI = self.MPI
        g = self._grad
        if self.weight != 1.0:
            np.multiply(g, g.dtype.type(self.weight), out=g)
        st = self._status
        st[0], st[1] = self.weight * loss, float(interrupted)
        req = self.comm.Iallreduce(MPI.IN_PLACE, st, op=MPI.SUM)
        self.comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
        req.Wait()
        t1 = time.perf_counter()
        self._calls += 1
        if self._calls > WARMUP:  # the first steps compile and load kernels
            self.reduce_s += t1 - t0
            self.step_s += t1 - self._t_step
            self.steps += 1
        self._t_step = t1
        return float(st[0]), bool(st[1] > 0)

    def average(self, value):
        """The global value of a per-rank mean over this rank's rows (a validation loss)."""
        return self.comm.allreduce(self.weight * value, op=self.MPI.SUM)

    # --- checkpoints -----------------------------------------------------------------------
    def check_replicas(self, trainer):
        """TrainingStopped on every rank when the parameters or optimizer state differ across ranks."""
        from .trainer import TrainingStopped
        sums = self.comm.allgather(checksum(trainer.model, trainer.opt))
        bad = [r for r, s in enumerate(sums) if s != sums[0]]
        if bad:
            raise TrainingStopped(f"step {trainer.state.step}: the parameters on rank {bad[0]} differ from rank "
                                  f"0's (checksum {sums[bad[0]]:08x}, not {sums[0]:08x}); training stopped "
                                  f"({trainer._kept()})")

    def on_root(self, fn):
        """fn() on rank 0 alone; a TrainingStopped it raises is raised on every rank."""
        from .trainer import TrainingStopped
        msg = None
        if self.root:
            try:
                fn()
            except TrainingStopped as e:
                msg = str(e)
        msg = self.comm.bcast(msg, root=0)
        if msg is not None:
            raise TrainingStopped(msg)

    def summary(self):
        if not self.steps:
            return None
        step = self.step_s / self.steps
        red = self.reduce_s / self.steps
        return (f"data-parallel over {self.size} ranks, global batch {self.batch} ({self.hi - self.lo} rows on "
                f"rank 0): {1e3 * step:.1f} ms a step, of which the gradient allreduce {1e3 * red:.2f} ms "
                f"({100 * red / step:.1f}%, waiting for the slowest rank included)")


# --- helpers --------------------------------------------------------------------------------
def _rows(B: int, K: int, r: int) -> tuple[int, int]:
    """Rank r's rows lo:hi of a batch of B: B // K each, the first B % K ranks one more."""
    from .shards import row_ranges
    return row_ranges(B, K)[r]


def _grad_buffer(opt) -> np.ndarray:
    from .optim import flat_span
    span = flat_span(opt.params)
    if span is None:
        raise DistributedError("data-parallel training needs the parameters in one flat buffer (a graph model)")
    return span[1]


def _state_buffers(model, opt) -> list:
    """The arrays that must be identical on every rank: the flat parameter buffer and the
    optimizer's flat state (or per-parameter arrays when not flat)."""
    from .optim import flat_span
    span = flat_span(opt.params)
    if span is not None and getattr(opt, "_flat", None) is not None:
        return [span[0], *(opt._flat_state[s] for s in sorted(opt._flat_state))]
    return [p.data for p in opt.params] + [b for s in sorted(opt.state) for b in opt.state[s]]


def checksum(model, opt) -> int:
    """CRC-32 of the parameters and optimizer state, bytes as they are (bit-identical or not)."""
    c = zlib.crc32(np.int64(opt.t).tobytes())
    for buf in _state_buffers(model, opt):
        c = zlib.crc32(memoryview(np.ascontiguousarray(buf)).cast("B"), c)
    return c


def _fingerprint(trainer, steps) -> dict:
    """What must be equal on every rank for the run to be one run."""
    task, opt = trainer.task, trainer.opt
    data = getattr(getattr(task, "data", None), "train", None)
    return {
        "kind": task.kind, "config": task.config(), "steps": int(steps), "step": trainer.state.step,
        "optimizer": type(opt).__name__, "hyper": opt.hyper, "max_grad_norm": opt.max_grad_norm, "t": opt.t,
        "schedule": [type(opt.schedule).__name__, vars(opt.schedule)],
        "eval_interval": trainer.eval_interval,
        "parameters": [[n, list(p.shape), str(p.data.dtype)] for n, p in trainer.model.named_parameters()],
        "data": hashlib.sha256(np.ascontiguousarray(data)).hexdigest()[:16] if isinstance(data, np.ndarray) else None,
    }


def _first_difference(a, b, key=""):
    """(dotted key, a's value, b's value) of the first difference between two JSON-like values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{key}[{i}]")
    return key, json.dumps(a, default=str), json.dumps(b, default=str)


def bench(steps: int = 40, warmup: int = 8, batch: int = 12) -> dict:
    """Training throughput of the reference GPT at global batch `batch` in this world (one process,
    or each rank of `mpirun -n K`), and the gradient allreduce's share of the step; rank 0 also
    times the allreduce alone (the ranks in step, no compute between)."""
    import tempfile

    from .data import read_text
    from .gpt import GPTConfig
    from .optim import AdamW
    from .tasks import GPTTask
    from .trainer import Trainer
    w = world()
    task = GPTTask(GPTConfig(), read_text(), batch_size=batch, seed=0)
    opt = AdamW(task.model.parameters(), lr=1e-3, wd=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(task, task.model, opt, tmp, progress=False, world=w)
        w.start(trainer, steps)
    red = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0, red = time.perf_counter(), 0.0
        task.model.zero_grad()
        loss = task.train_step()
        t1 = time.perf_counter()
        w.reduce(loss, False)
        red += time.perf_counter() - t1
        opt.step()
    total = time.perf_counter() - t0
    out = {"ranks": w.size, "global_batch": batch, "steps": steps,
           "tokens_per_s": round(steps * batch * task.cfg.block_size / total),
           "ms_per_step": round(1e3 * total / steps, 2), "allreduce_ms_per_step": round(1e3 * red / steps, 3),
           "allreduce_share": round(red / total, 4),
           "threads": task.model._last.tuner.best}  # the count the step's thread tuner settled on
    if w.size > 1:
        g = _grad_buffer(opt)
        w.comm.Barrier()
        t = time.perf_counter()
        for _ in range(20):
            w.comm.Allreduce(w.MPI.IN_PLACE, g, op=w.MPI.SUM)
        out["allreduce_alone_ms"] = round(1e3 * (time.perf_counter() - t) / 20, 3)
        out["gradient_mb"] = round(g.nbytes / 1e6, 2)
    return out


if __name__ == "__main__":  # python -m models.distributed [STEPS]: see bench()
    res = bench(*map(int, sys.argv[1:2]))
    if world().root:
        print(json.dumps(res))


__all__ = ["DistributedError", "Local", "MPIWorld", "world", "launched_size", "checksum"]
