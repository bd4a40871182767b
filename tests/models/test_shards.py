"""models.shards: a step split by rows of its batch over threads computes what the unsplit step
computes: the loss, the logits and every parameter gradient, in float64 to rounding; on one
thread or several, with shards of unequal size; a failure on a worker thread is raised."""

import numpy as np
import pytest

from symgrad.models import threads
from symgrad.models.gpt import GPT, GPTConfig
from symgrad.models.shards import ShardedStep, row_ranges, run_jobs

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dtype="float64")


@pytest.fixture
def most():
    """threads.set_most(n) for the test, put back afterwards."""
    yield threads.set_most
    threads.set_most(None)


def _batch(B, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, TINY["vocab_size"], (B, TINY["block_size"]))
    y = rng.integers(0, TINY["vocab_size"], (B, TINY["block_size"]))
    return x, y


def _run(model, x, y):
    logits, loss = model(x, y)
    model.backward()
    return logits, loss, model.store.grad.copy()


@pytest.mark.parametrize("B,n", [(4, 2), (5, 2), (5, 3)])
def test_sharded_step_matches_the_unsplit_step_in_float64(most, B, n):
    x, y = _batch(B)
    most(1)
    plain = GPT(GPTConfig(**TINY), seed=3)
    want = _run(plain, x, y)
    assert not isinstance(plain._last, ShardedStep)
    most(n)
    split = GPT(GPTConfig(**TINY), seed=3)
    got = _run(split, x, y)
    assert isinstance(split._last, ShardedStep) and len(split._last.steps) == n
    assert [hi - lo for lo, hi in split._last.parts] == [hi - lo for lo, hi in row_ranges(B, n)]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-14, err_msg="logits")
    assert got[1] == pytest.approx(want[1], rel=1e-13)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-10, atol=1e-14, err_msg="gradient")
    assert np.abs(want[2]).max() > 0


def test_shards_on_one_thread_run_in_turn_and_give_the_same_gradient(most):
    most(2)
    x, y = _batch(4)
    m = GPT(GPTConfig(**TINY), seed=5)
    _, _, parallel = _run(m, x, y)
    step = m._last
    step.tuner.apply(1)
    step.tuner.n = 1  # what the tuner sets on a busy machine: the shards one after the other
    step.tuner.choose = lambda: 1
    _, _, serial = _run(m, x, y)
    np.testing.assert_array_equal(serial, parallel)  # the same arithmetic in the same order


def test_a_worker_threads_failure_is_raised_on_the_calling_thread():
    def fail():
        raise ValueError("shard 1 failed")

    done = []
    with pytest.raises(ValueError, match="shard 1 failed"):
        run_jobs([lambda: done.append(0), fail], parallel=True)
    assert done == [0]  # the calling thread's shard ran to its end
    run_jobs([lambda: done.append(1), lambda: done.append(2)], parallel=True)  # the crew still works
    assert sorted(done) == [0, 1, 2]


def test_row_ranges_cover_the_rows_in_order():
    assert row_ranges(12, 2) == [(0, 6), (6, 12)]
    assert row_ranges(5, 3) == [(0, 2), (2, 4), (4, 5)]
