"""`symgrad bench train`: its options, the GEMM floor, the load processes, and one tiny run of the
bench itself (1 round of 1 step, a small GPT), its JSON shape and its text. Timings are not
checked: they are measured, not tested."""

import argparse
import importlib.util
import json
import os

import numpy as np
import pytest

from symgrad.models import bench

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
TINY = dict(block_size=16, n_layer=1, n_head=2, n_embd=32)


def _args(**kw):
    a = dict(threads=1, rounds=1, steps=1, profile=False, json=True, peer=("eager",), load=0)
    a.update(kw)
    return argparse.Namespace(**a)


@pytest.fixture
def keep_threads():
    """The bench sets Numba's, torch's and the BLAS's thread counts: put them back afterwards."""
    import numba

    from symgrad import compiled
    n = numba.get_num_threads()
    torch = pytest.importorskip("torch")
    t = torch.get_num_threads()
    yield
    numba.set_num_threads(n)
    torch.set_num_threads(t)
    compiled.set_blas_threads(n)


def _tiny():
    from symgrad.models.gpt import GPTConfig

    return GPTConfig(**TINY)


def test_floor_gemms_are_the_products_the_reference_step_prints():
    from symgrad.models import threads
    from symgrad.models.gpt import GPT, GPTConfig

    threads.set_most(1)  # one thread: the step is not split, its large products run in row blocks
    try:
        g = bench.floor_gemms(GPT(GPTConfig(), seed=0), (12, 64))
    finally:
        threads.set_most(None)
    assert bench.matmul_flops(g) == 3_964_207_104  # 3.96 GFLOP in matmuls (notes/performance-baseline)
    # per block: 4 linears x 3 products, and attention's 6 per sequence (12 x 4 heads); lm_head 3
    assert sum(x[6] for x in g) == 4 * 4 * 3 + 3 + 12 * 4 * 4 * 6
    # the linears' products in row blocks, one per thread
    assert ("blocks.0.attn.c_attn forward", 768, 128, 384, False, False, 1, "rows", 0) in g  # x @ W
    assert ("blocks.3.mlp.c_proj backward", 512, 768, 128, True, False, 1, "rows", 0) in g  # dW = x.T @ g
    assert ("lm_head backward", 768, 65, 128, False, True, 1, "rows", 0) in g  # dX = g @ W.T
    # attention's dk = gS.T @ q, per sequence, each on one thread
    assert ("blocks.2.attn.attn backward", 64, 64, 32, True, False, 48, "batch", 0) in g


def test_floor_gemms_of_a_step_in_shards_are_each_shards_on_its_lane():
    from symgrad.models import threads
    from symgrad.models.gpt import GPT, GPTConfig

    threads.set_most(2)
    try:
        g = bench.floor_gemms(GPT(GPTConfig(), seed=0), (12, 64))
    finally:
        threads.set_most(None)
    assert bench.matmul_flops(g) == 3_964_207_104  # the same products, in two halves
    assert {x[8] for x in g} == {0, 1} and all(x[7] == "" for x in g)
    for lane in (0, 1):  # 6 sequences each
        assert ("blocks.0.attn.c_attn forward", 384, 128, 384, False, False, 1, "", lane) in g
        assert ("blocks.2.attn.attn backward", 64, 64, 32, True, False, 24, "", lane) in g


@pytest.mark.parametrize("threads", [1, 2])
def test_floor_computes_the_listed_products(threads):
    import numba

    gemms = [("nn", 3, 4, 5, False, False, 2, "", 0), ("nt", 2, 3, 4, False, True, 1, "rows", 0),
             ("tn", 4, 3, 2, True, False, 3, "batch", 0), ("tt", 7, 2, 5, True, True, 1, "rows", 0)]
    lanes = [(*g[:7], "", lane) for lane in (0, 1) for g in gemms]  # a step in two shards
    for table in (gemms, lanes):
        run = bench.build_floor(table)
        was = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            run()
        finally:
            numba.set_num_threads(was)
        A, B, O, rows = run.buffers
        assert len(rows) == sum(g[6] for g in table)
        for M, K, N, ta, tb, oa, ob, oo in rows:
            a = A[oa:oa + M * K].reshape((K, M) if ta else (M, K))
            b = B[ob:ob + K * N].reshape((N, K) if tb else (K, N))
            want = (a.T if ta else a) @ (b.T if tb else b)
            np.testing.assert_allclose(O[oo:oo + M * N].reshape(M, N), want, rtol=1e-5, atol=1e-6)


def test_parse_peers():
    assert bench.parse_peers("eager") == ("eager",)
    assert bench.parse_peers("all") == ("eager", "fused", "compile")
    assert bench.parse_peers("fused,eager,fused") == ("fused", "eager")
    for bad in ("", "jit", "eager,jit"):
        with pytest.raises(ValueError):
            bench.parse_peers(bad)


def test_cli_options(capsys):
    from symgrad.train_cmd import _bench_parser, bench_main

    p = _bench_parser()
    a = p.parse_args([])
    assert (a.peer, a.load, a.threads, a.rounds, a.steps, a.json, a.profile) == ("eager", 0, 2, 5, 10, False, False)
    assert p.parse_args(["--load"]).load == os.cpu_count()
    assert p.parse_args(["--load", "--json"]).load == os.cpu_count()
    assert p.parse_args(["--load", "3", "--peer", "all"]).load == 3
    assert bench_main(["--peer", "jit"]) == 2
    assert bench_main(["--load", "-1"]) == 2
    err = capsys.readouterr().err
    assert "unknown peer 'jit'" in err and ">= 0" in err


def test_load_processes_start_and_are_killed():
    with bench.busy_load(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(KeyboardInterrupt):
        with bench.busy_load(1) as procs:
            assert procs[0].poll() is None
            raise KeyboardInterrupt
    assert procs[0].poll() is not None


@needs_torch
def test_bench_json_shape_and_its_text(capsys, keep_threads):
    """One run (two peers, a busy process, the profile): its JSON, then the same result as text."""
    assert bench.main(_args(load=1, profile=True, peer=("eager", "fused")), cfg=_tiny(), batch=2) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["load"] == 1 and len(bench.LAST_LOAD) == 1 and bench.LAST_LOAD[0].poll() is not None
    assert list(res["peers"]) == ["eager", "fused"]
    for name, peer in res["peers"].items():
        for k in ("ms_per_step", "speedup", "speedup_min", "speedup_max", "tokens_per_s", "mfu"):
            assert isinstance(peer[k], float) and peer[k] > 0, (name, k)
        assert peer["speedup_min"] <= peer["speedup"] <= peer["speedup_max"]
        assert peer["peak_mem_mib"] > 0  # each side's own process
    eager = res["peers"]["eager"]
    for k in ("floor_ms", "symgrad_ms_per_step", "symgrad_mfu", "floor_mfu", "sgemm_peak_gflops",
              "matmul_gflop_per_step", "symgrad_over_floor"):
        assert res[k] > 0, k
    assert res["speedup"] == eager["speedup"] and res["torch_ms_per_step"] == eager["ms_per_step"]
    assert res["config"]["n_embd"] == 32 and not res["reference_config"]
    assert res["symgrad_peak_mem_mib"] > 0 and res["profile_ms_per_step"]
    bench._report(_args(json=False), res)
    out = capsys.readouterr().out
    for s in ("symgrad ", "torch eager", "torch fused", "GEMM floor", "symgrad/floor",
              "MFU counts matmul FLOPs only", "speedup", "load: 1 busy processes"):
        assert s in out, s
    assert any(label in out for label in res["profile_ms_per_step"])  # the profile's lines


def test_a_side_runs_in_its_own_process_and_its_errors_come_back():
    from symgrad.models.sides import Side, SideError

    with pytest.raises(SideError, match="side 'bad'.*ModuleNotFoundError"):
        Side("bad", "no_such_module:calls", ())
    s = Side("rss", "tests.models.bench_side:calls", (4,))
    try:
        assert s.ask("pid") != os.getpid()
        assert s.time("grow", 3) > 0 and s.ask("memory") >= 6  # three 4 MiB blocks held
        with pytest.raises(SideError, match="ZeroDivisionError"):
            s.ask("fail")
        assert s.ask("pid") != os.getpid()  # still serving after a failed call
    finally:
        s.close()


@needs_torch
def test_bench_hvp_agrees_with_torch_and_reports_a_ratio_with_its_spread(capsys, keep_threads):
    from symgrad.models import bench_hvp

    res = bench_hvp.run(_args(rounds=2), cfg=_tiny(), batch=2)
    assert res["max_rel_difference"] < 1e-4  # float32 H v against torch's double backward
    assert res["speedup_min"] <= res["speedup"] <= res["speedup_max"] and res["speedup"] > 0
    assert res["symgrad_ms"] > 0 and res["torch_ms"] > 0
    text = bench_hvp.report(res)
    assert "torch double backward" in text and "speedup" in text
    assert json.loads(bench_hvp.report(res, as_json=True))["batch"] == 2
