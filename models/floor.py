"""The GEMM floor of a training step and the sgemm peak, for `symgrad bench train`.

The floor is the step's matrix products alone, read off its printed step (`Plan.products`: each
product a called kernel prints, with how the kernel runs it), done back to back on preallocated
buffers through the routine the kernels call, each run the kernels' way: a batch of per-sequence
products side by side, one per thread; a large product in row blocks, one per thread; a step
split into shards (models.shards), each shard's products on its own thread, side by side. The step
cannot be faster than its products; how close it comes is the bench's symgrad/floor. The peak
is one large sgemm the same way (row blocks on every thread), the best call of a run: what MFU
is measured against.
"""

from __future__ import annotations

import time

import numpy as np

PEAK_SHAPE = (768, 512, 512)  # M, K, N of the sgemm the MFU peak is measured on


def floor_gemms(model, key) -> list:
    """The matrix products of one training step of `model` at configuration `key` ((B, T) for
    the GPT), read off its printed step: (label, M, K, N, trans_a, trans_b, count, mode, lane),
    out[M, N] = op(a)[M, K] @ op(b)[K, N], op = transpose where the flag is set (the operand
    is stored transposed, as the kernels' `x.T` / `W.T` views are); mode: how the kernels run
    them ("batch": the count calls side by side, one per thread, as attention's per-sequence
    products; "rows": in row blocks of the output, one block per thread; "": one call); lane:
    the shard whose thread runs it (models.shards: each shard's products one after the other
    on its own thread, the shards side by side; 0 for a step that is not split). Each is one
    product a called kernel prints (`Plan.products`), so the list is the step's own, whatever
    the model."""
    step = model.step_for(tuple(key), loss=True)
    shards = getattr(step, "steps", None)
    if shards is None:
        return [(*p, 0) for p in step.plan.products()]
    return [(*p[:7], "", r) for r, s in enumerate(shards) for p in s.plan.products()]


def matmul_flops(gemms) -> int:
    return sum(2 * g[1] * g[2] * g[3] * g[6] for g in gemms)


def gemm_routine():
    """(gemm, name): the matrix product the kernels call (compiled/blas.py), the one switch."""
    from symgrad.compiled import blas
    return blas.gemm, f"compiled.blas.gemm ({blas.backend()})"


MODES = {"": 0, "batch": 1, "rows": 2}
_FLOOR = None


def _floor_kernel():
    """The njit function doing a table's GEMMs back to back (compiled once per process), as the
    kernels run them: with one lane, a "batch" run side by side, one product per thread, and a
    "rows" product in row blocks, one per thread (compiled/parallel.py); with several lanes (the
    shards of a step, models.shards), the lanes side by side, each lane's products one after the
    other on its thread."""
    global _FLOOR
    if _FLOOR is None:
        import numba
        from symgrad.compiled.blas import gemm

        @numba.njit
        def product(A, B, O, row, r0, r1):
            """Rows r0:r1 of the output of the product `row` describes."""
            M, K, N, ta, tb, oa, ob, oo = row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7]
            a, b = A[oa:oa + M * K], B[ob:ob + K * N]
            out = O[oo:oo + M * N].reshape(M, N)[r0:r1]
            if ta == 0 and tb == 0:  # one call per layout: each operand's type stays contiguous
                gemm(a.reshape(M, K)[r0:r1], b.reshape(K, N), out)
            elif ta == 0:
                gemm(a.reshape(M, K)[r0:r1], b.reshape(N, K).T, out)
            elif tb == 0:
                gemm(a.reshape(K, M).T[r0:r1], b.reshape(K, N), out)
            else:
                gemm(a.reshape(K, M).T[r0:r1], b.reshape(N, K).T, out)

        @numba.njit
        def serial(A, B, O, table, lo, hi):
            for i in range(lo, hi):
                product(A, B, O, table[i], 0, table[i, 0])

        @numba.njit(parallel=True)
        def floor(A, B, O, table, runs, lanes):
            nt = numba.get_num_threads()
            if lanes.shape[0] > 1:
                for lane in numba.prange(lanes.shape[0]):
                    serial(A, B, O, table, lanes[lane, 0], lanes[lane, 1])
                return
            for r in range(runs.shape[0]):
                lo, hi, mode = runs[r, 0], runs[r, 1], runs[r, 2]
                if mode == 1 and nt > 1:
                    for i in numba.prange(lo, hi):
                        product(A, B, O, table[i], 0, table[i, 0])
                elif mode == 2 and nt > 1:
                    for i in range(lo, hi):
                        M = table[i, 0]
                        for t in numba.prange(nt):
                            product(A, B, O, table[i], t * M // nt, (t + 1) * M // nt)
                else:
                    serial(A, B, O, table, lo, hi)

        _FLOOR = floor
    return _FLOOR


def build_floor(gemms, dtype="float32"):
    """A `run()` doing every GEMM in `gemms` (floor_gemms' tuples) once, back to back inside one
    njit function, on preallocated buffers (one set per call, as the step's activations are
    distinct arrays)."""
    kernel = _floor_kernel()
    rows, runs, lanes, sa, sb, so = [], [], {}, 0, 0, 0
    for _, M, K, N, ta, tb, count, mode, lane in sorted(gemms, key=lambda g: g[8]):
        lo = len(rows)
        runs.append((lo, lo + count, MODES[mode]))
        lanes[lane] = (lanes.get(lane, (lo,))[0], lo + count)
        for _ in range(count):
            rows.append((M, K, N, int(ta), int(tb), sa, sb, so))
            sa, sb, so = sa + M * K, sb + K * N, so + M * N
    table = np.array(rows, dtype=np.int64)
    runs = np.array(runs, dtype=np.int64)
    lanes = np.array([lanes[k] for k in sorted(lanes)], dtype=np.int64)
    rng = np.random.default_rng(0)
    A = (rng.random(sa, dtype=np.float32) - 0.5).astype(dtype)
    B = (rng.random(sb, dtype=np.float32) - 0.5).astype(dtype)
    O = np.zeros(so, dtype=dtype)

    def run():
        kernel(A, B, O, table, runs, lanes)

    run.buffers = (A, B, O, table)  # for tests: the operands and results, flat, and the table
    run.nbytes = A.nbytes + B.nbytes + O.nbytes
    return run


def build_peak(dtype="float32"):
    """A `call()` returning the GFLOP/s of one PEAK_SHAPE GEMM through the kernels' routine, on
    every thread (row blocks, as the kernels split a large product)."""
    M, K, N = PEAK_SHAPE
    run = build_floor([("peak", M, K, N, False, False, 1, "rows", 0)], dtype)

    def call():
        t0 = time.perf_counter()
        run()
        return 2 * M * K * N / (time.perf_counter() - t0) / 1e9

    return call


__all__ = ["floor_gemms", "matmul_flops", "gemm_routine", "build_floor", "build_peak", "PEAK_SHAPE", "MODES"]
