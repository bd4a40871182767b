"""`symgrad bench kernels` (models/bench_kernels.py): both sides build every case from the same
data, and a short run reports a ratio with its spread per kernel. Timings are measured, not
tested."""

import importlib.util
import json

import pytest

from symgrad.models import bench_kernels

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


def test_both_sides_draw_the_same_data():
    a, b = bench_kernels._data(**bench_kernels.SHAPES), bench_kernels._data(**bench_kernels.SHAPES)
    assert set(a) == set(bench_kernels.NAMES)
    for name in a:
        for k in a[name]:
            assert (a[name][k] == b[name][k]).all(), (name, k)


@needs_torch
def test_a_short_run_reports_each_kernel_with_its_spread(capsys):
    from symgrad.kernels_cmd import bench_main

    assert bench_main(["--rounds", "1", "--only", "softmax", "cross_entropy", "--threads", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["kernel"] for r in res] == ["softmax", "cross_entropy"]
    for r in res:
        assert r["symgrad_ms"] > 0 and r["torch_ms"] > 0
        assert r["speedup_min"] <= r["speedup"] <= r["speedup_max"]


def test_an_unknown_kernel_is_refused_in_one_line(capsys):
    from symgrad.kernels_cmd import bench_main

    assert bench_main(["--only", "convolution"]) == 2
    assert "unknown kernel(s) convolution" in capsys.readouterr().err
