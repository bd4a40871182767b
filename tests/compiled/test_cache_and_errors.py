"""The kernel cache (second process loads without compiling, concurrent builders, corrupt
files) and the errors a bad call raises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from symgrad import compiled
from symgrad import derive
from symgrad.compiled import api
from tests.defined_layers import BUILDERS
from tests.compiled.test_kernels import BUILTINS

ROOT = Path(__file__).resolve().parents[2]

# Builds every kernel (built-in + test-only, both dtypes) and calls each once; prints Numba's
# cache statistics per dispatcher as JSON.
_LOADER = r"""
import json, sys
import numpy as np
from symgrad import compiled, derive
from tests.defined_layers import defined, BUILDERS
from tests.compiled.test_kernels import _cast, _random_cases
from tests.layers import cases
names = json.loads(sys.argv[1])
stats = {}
for n in names:
    d = defined(n) if n in BUILDERS else derive.layer(n)
    try:
        args = cases(n)[0][1]
    except KeyError:
        args = _random_cases(d, np.random.default_rng(1))[1][1]
    for dt in ("float64", "float32"):
        k = compiled.kernels(d, dt)
        a = _cast(args, dt)
        f = k.forward(**a)
        up = {d.upstream(o.name): (np.ones_like(f[o.name]) if np.ndim(f[o.name]) else 1.0) for o in d.outputs}
        k.backward(**up, **a, **f)
        for disp in k.dispatchers:
            stats[f"{n}/{dt}/{disp.__name__}"] = [sum(disp.stats.cache_hits.values()),
                                                  sum(disp.stats.cache_misses.values())]
print(json.dumps(stats))
"""


def _run_loader(names, cache_dir, timeout):
    env = dict(os.environ, SYMGRAD_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", _LOADER, json.dumps(names)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_second_process_loads_every_kernel_from_cache_without_compiling(kernel_cache):
    names = BUILTINS + list(BUILDERS)
    # The first fills the cache where this session did not: on a cold cache that is compiling
    # every kernel, 430 s on a quiet 2-core machine and more beside the other test worker.
    first = _run_loader(names, kernel_cache, timeout=1800)
    second = _run_loader(names, kernel_cache, timeout=600)
    assert first and set(second) == set(first)
    compiled_again = {k: v for k, v in second.items() if v[1] != 0 or v[0] < 1}
    assert not compiled_again, f"kernels recompiled in a warm process: {compiled_again}"


_BUILDER = r"""
import sys
from symgrad import compiled, derive
from tests.defined_layers import sgd_step
k = compiled.kernels(derive.define("t_race", sgd_step), "float64")
print(k.source_path)
"""


def test_concurrent_builders_do_not_corrupt_the_cache(tmp_path):
    env = dict(os.environ, SYMGRAD_CACHE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert compiled.cache.read_valid(path) is not None
    assert not list(path.parent.glob("*.tmp"))


def test_corrupt_cache_file_is_detected_and_rebuilt():
    d = derive.define("t_corrupt", BUILDERS["t_swish"])
    k = compiled.kernels(d, "float64")
    path = Path(k.source_path)
    text = path.read_text()
    path.write_text(text.replace("np.exp", "np.log", 1))  # an edit the hash line does not match
    api._loaded.clear()
    k2 = compiled.kernels(d, "float64")
    assert compiled.cache.read_valid(path) is not None
    assert "np.log" not in k2.source.split("def ")[2]
    x = np.linspace(-2, 2, 6).reshape(2, 3)
    np.testing.assert_allclose(k2.forward(x=x)["y"], x / (1 + np.exp(-x)), rtol=1e-14)
    path.write_text(text[: len(text) // 2])  # truncated
    api._loaded.clear()
    compiled.kernels(d, "float64")
    assert compiled.cache.read_valid(path) is not None


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path / "here"))
    assert compiled.cache_dir() == tmp_path / "here" / "kernels"


# --- bad input ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lin():
    return compiled.kernels("linear", "float32")


def _lin_args(N=3, I=4, O=2, dt=np.float32):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((N, I)).astype(dt), "W": rng.standard_normal((I, O)).astype(dt),
            "b": rng.standard_normal(O).astype(dt)}


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.update(x=a["x"].astype(np.float64)), r"linear.forward: argument 'x' has dtype float64, but this kernel is float32"),
    (lambda a: a.update(W=a["W"][None]), r"linear.forward: argument 'W' must have rank 2"),
    (lambda a: a.update(b=np.zeros(5, np.float32)), r"linear.forward: inconsistent shapes: argument 'b'"),
    (lambda a: a.update(W=np.zeros((5, 2), np.float32)), r"linear.forward: inconsistent shapes: argument 'W'"),
    (lambda a: a.update(x=np.asfortranarray(np.zeros((3, 4), np.float32))), r"linear.forward: argument 'x' is not C-contiguous"),
    (lambda a: a.update(x=a["x"].tolist()), r"linear.forward: argument 'x' must be a numpy array"),
    (lambda a: a.pop("b"), r"linear.forward: missing argument 'b'"),
    (lambda a: a.update(bias=1), r"linear.forward: unknown argument 'bias'"),
], ids=["dtype", "rank", "shape-b", "shape-W", "non-contiguous", "list", "missing", "unknown"])
def test_bad_forward_input_raises_kernel_error_naming_kernel_and_argument(lin, mutate, message):
    args = _lin_args()
    mutate(args)
    with pytest.raises(compiled.KernelError, match=message):
        lin.forward(**args)


def test_bad_backward_input_and_bad_dtype_name(lin):
    args = _lin_args()
    with pytest.raises(compiled.KernelError, match=r"linear.backward: missing argument 'g'"):
        lin.backward(**args)
    with pytest.raises(compiled.KernelError, match=r"linear.backward: inconsistent shapes: argument '(g|W)'"):
        lin.backward(g=np.zeros((3, 5), np.float32), **args)
    with pytest.raises(compiled.KernelError, match="dtype must be 'float32' or 'float64'"):
        compiled.kernels("linear", "float16")
    assert issubclass(compiled.KernelError, ValueError)


def test_out_of_range_ids_are_refused_before_the_kernel_runs():
    if "embedding" not in BUILTINS:
        pytest.skip("derive provides no embedding")
    k = compiled.kernels("embedding", "float64")
    with pytest.raises(compiled.KernelError, match=r"embedding.forward: argument 'ids' holds indices"):
        k.forward(ids=np.array([0, 4]), table=np.zeros((4, 3)))


def test_nan_in_a_row_propagates_to_that_row_only():
    k = compiled.kernels("softmax", "float64")
    x = np.random.default_rng(0).standard_normal((3, 4))
    x[1, 2] = np.nan
    s = k.forward(x=x)["s"]
    assert np.isnan(s[1]).all() and np.isfinite(s[[0, 2]]).all()


def test_derivations_and_kernels_share_one_cache_root(tmp_path, monkeypatch):
    from symgrad.compiled import cache as kernel_cache
    from symgrad.derive import cache as derivation_cache

    monkeypatch.delenv("SYMGRAD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert derivation_cache.cache_dir() == tmp_path / "symgrad" / "derivations"
    assert kernel_cache.cache_dir() == tmp_path / "symgrad" / "kernels"
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path / "mine"))
    assert derivation_cache.cache_dir().parent == kernel_cache.cache_dir().parent == tmp_path / "mine"
