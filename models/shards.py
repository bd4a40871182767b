"""A step split over threads by rows of its batch: data parallelism inside one process.

A model whose batch is independent rows with the loss their mean (`GraphModel.splits_by_rows`:
the GPT's sequences, the MLP's samples) runs a step at batch B on n threads as n shards: shard r
is the printed step (`models.step.Step`) of its rows lo:hi, planned once at that batch size,
with activations of its own and, but for shard 0, a gradient buffer of its own. Shard r runs on
thread r at one Numba thread, the whole of its forward and backward with no other thread to
wait for; the threads meet twice a step, after the forwards and after the backwards.

The mean over the batch is the share-weighted mean of the shards' means, loss = sum_r w_r
loss_r with w_r = (hi - lo) / B; so shard r's backward starts from its share, d loss / d loss_r
= w_r (the printed backward's `seed`), its gradients come out weighted, and the batch's gradient
is their sum: one pass adds the other shards' buffers into the parameter store's, each thread a
part of it. Nothing here differentiates: every gradient is a printed backward's.

Measured 2026-12-06 on the 2-vCPU AMD EPYC VM (the reference GPT's forward + backward, medians of
8 alternating rounds): one step with every kernel split over both threads (row blocks, rows in
parallel) 39.9 ms; two shards of 6 sequences, one thread each, 30.1 ms; one thread 55.1 ms. Each
shard's products run at one thread's full speed on data in its own core's cache, where a product
split over both threads met the other at every call.

On one thread (a busy machine: the `ThreadTuner` decides, as for a plain step) the shards run
one after the other on the calling thread: the same arithmetic, in the same order, so the
result does not depend on the thread count.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from .graph import GraphError
from .step import compile_ahead
from .threads import ThreadTuner


class _Worker(threading.Thread):
    """A thread that runs the jobs it is given at one Numba thread (Numba's count is per thread;
    the kernels release the GIL while they run)."""

    def __init__(self):
        super().__init__(daemon=True, name="symgrad shard")
        self.jobs, self.done = queue.SimpleQueue(), queue.SimpleQueue()
        self.start()

    def run(self):
        import numba

        numba.set_num_threads(1)
        while True:
            job = self.jobs.get()
            try:
                job()
                self.done.put(None)
            except BaseException as e:  # noqa: BLE001  (handed to the calling thread)
                self.done.put(e)


_CREW: list = []  # the worker threads of this process, started as needed, shared by every step


def run_jobs(jobs, parallel: bool):
    """Run the jobs, job 0 on the calling thread (at one Numba thread), job r > 0 on worker r-1;
    or all on the calling thread, in order. The first exception raised is raised here."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        if not parallel:
            for job in jobs:
                job()
            return
        while len(_CREW) < len(jobs) - 1:
            _CREW.append(_Worker())
        for w, job in zip(_CREW, jobs[1:]):
            w.jobs.put(job)
        error = None
        try:
            jobs[0]()
        except BaseException as e:  # noqa: BLE001  (after the workers are done)
            error = e
        for w in _CREW[:len(jobs) - 1]:
            e = w.done.get()
            error = error or e
        if error is not None:
            raise error
    finally:
        numba.set_num_threads(before)


def row_ranges(rows: int, n: int) -> list:
    """n parts lo:hi of `rows` rows: rows // n each, the first rows % n one more."""
    q, m = divmod(rows, n)
    out, lo = [], 0
    for r in range(n):
        hi = lo + q + (r < m)
        out.append((lo, hi))
        lo = hi
    return out


class ShardedStep:
    """The step of `model` at configuration `key` (key[0] rows) as n shards (module docstring).
    Offers what `models.step.Step` does: forward(**inputs) -> loss, backward(), results, plan
    (shard 0's), source_path, tuner."""

    def __init__(self, model, key, n, train=True, loss=True):
        rows = key[0]
        self.model, self.key, self.train = model, tuple(key), train
        self.parts = row_ranges(rows, n)
        self.shares = [(hi - lo) / rows for lo, hi in self.parts]
        store = model.store
        from .step import Step
        self.steps = []
        for r, (lo, hi) in enumerate(self.parts):
            graph = model.build(store, model._rng, hi - lo, *key[1:], loss=loss)
            grads = None if r == 0 or not train else np.zeros_like(store.grad)
            self.steps.append(Step(graph, train=train, grads=grads, tuned=False))
        self.plan = self.steps[0].plan
        self.source_path = self.steps[0].source_path
        self.rows = rows
        self.tuner = ThreadTuner(apply=lambda count: None)  # the count is how many shards run at once
        self._ran = False
        self._joined = {}  # result name -> the buffer its shards' rows are copied into

    def _split(self, inputs: dict) -> list:
        """Each shard's part of every input: the rows of its leading axis in proportion."""
        out = [{} for _ in self.parts]
        for name, a in inputs.items():
            a = np.asarray(a)
            per = a.shape[0] // self.rows if a.ndim else 0
            if a.ndim == 0 or per * self.rows != a.shape[0]:
                raise GraphError(f"{self.model.__class__.__name__}: input '{name}' of shape {a.shape} does not "
                                 f"split into the batch's {self.rows} rows")
            for part, (lo, hi) in zip(out, self.parts):
                part[name] = a[lo * per:hi * per]
        return out

    def forward(self, /, **inputs) -> float:
        self._ran = False
        parts = self._split(inputs)
        compile_ahead(self.steps)  # every shard's kernels at once, before the first call
        losses = [0.0] * len(self.steps)
        parallel = self.tuner.choose() > 1

        def job(r):
            def run():
                losses[r] = self.steps[r].forward(**parts[r])
            return run

        t0 = time.perf_counter()
        run_jobs([job(r) for r in range(len(self.steps))], parallel)
        self._t = time.perf_counter() - t0
        if not self.train:
            self.tuner.record(self._t)
        self._ran = True
        return float(sum(w * x for w, x in zip(self.shares, losses)))

    def backward(self):
        if not self.train:
            raise GraphError(f"{self.plan.graph.name}: this step was planned without a backward")
        if not self._ran:
            raise GraphError(f"{self.plan.graph.name}: backward() before forward()")
        parallel = self.tuner.n > 1
        t0 = time.perf_counter()
        run_jobs([lambda s=s, w=w: s.backward(seed=w) for s, w in zip(self.steps, self.shares)], parallel)
        total, others = self.model.store.grad, [s.grads for s in self.steps[1:]]
        spans = row_ranges(total.size, len(self.steps) if parallel else 1)

        def add(lo, hi):
            def run():
                for g in others:
                    np.add(total[lo:hi], g[lo:hi], out=total[lo:hi])
            return run

        run_jobs([add(lo, hi) for lo, hi in spans], parallel)
        self.tuner.record(self._t + time.perf_counter() - t0)

    @property
    def results(self) -> dict:
        """Each result of the last forward over the whole batch: the shards' rows in order (a
        copy), a scalar as the shares' weighted sum."""
        out, values = {}, self.plan.graph.results
        for name in self.steps[0].results:
            parts = [s.results[name] for s in self.steps]
            if values[name].shape == ():
                out[name] = np.asarray(sum(w * p for w, p in zip(self.shares, parts)))
                continue
            if name not in self._joined:  # allocated once: a step in steady state allocates nothing
                self._joined[name] = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
            out[name] = np.concatenate(parts, out=self._joined[name])
        return out


__all__ = ["ShardedStep", "row_ranges", "run_jobs"]
