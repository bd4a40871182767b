"""Faults of the kernel cache (issue #11, items 1 and 8): a key that misses an input of the printed
file, Numba cache files that are corrupt or missing, a cache dir that cannot be written.

Every case runs in a subprocess: a stale kernel or a corrupt Numba file can crash the process
(double free, segfault), and that must fail the test, not kill pytest.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from symgrad.compiled import cache

ROOT = Path(__file__).resolve().parents[2]

# Defines t_cached with the dims given (in that order), builds its float64 kernels and, with
# "call", runs them once; prints the results' errors and Numba's cache hits/misses as JSON.
_RUN = r"""
import json, sys
import numpy as np, sympy as sp
from symgrad import compiled, derive
dims, call = sys.argv[1], sys.argv[2] == "call"

def build(G):
    named = dict(zip(dims.split(), G.dims(dims)))
    N, C = named["N"], named["C"]
    x = G.input("x", (N, C))
    i, j = G.indices(i=N, j=C)
    G.output(G.bind("y", (i, j), sp.exp(x[i, j]) * x[i, j]))

k = compiled.kernels(derive.define("t_cached", build), "float64")
out = {"path": k.source_path}
if call:
    x = np.linspace(-1, 1, 15).reshape(3, 5)  # not square: swapped dims read the wrong strides
    y = k.forward(x=x)["y"]
    dx = k.backward(g=np.ones_like(x), x=x, y=y)["x"]
    out["y_err"] = float(np.abs(y - np.exp(x) * x).max())
    out["dx_err"] = float(np.abs(dx - np.exp(x) * (1 + x)).max())
    out["stats"] = {name: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
                    for name, f in (("forward", k.forward_dispatcher), ("backward", k.backward_dispatcher))}
print(json.dumps(out))
"""


def _run(cache_dir, dims, mode, check=True):
    env = dict(os.environ, SYMGRAD_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    env.pop("NUMBA_CACHE_DIR", None)  # Numba's files beside the kernel file, where the test looks
    res = subprocess.run([sys.executable, "-c", _RUN, dims, mode], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    if not check:
        return res
    how = f"killed by signal {-res.returncode}" if res.returncode < 0 else f"exit status {res.returncode}"
    assert res.returncode == 0, f"dims {dims!r}: {how}\n{res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def _assert_right(out, what):
    assert out["y_err"] < 1e-12 and out["dx_err"] < 1e-12, f"{what}: wrong results {out}"


# --- item 1: the key covers everything the printed file is printed from --------------------

@pytest.mark.parametrize("first, second", [("N C", "C N"), ("N C M", "N C")],
                         ids=["dims-swapped", "unused-dim-removed"])
def test_cache_key_covers_the_declared_dims_so_a_redefined_layer_never_loads_a_stale_kernel(
        tmp_path, first, second):
    built = _run(tmp_path, first, "build")
    again = _run(tmp_path, second, "call")  # was: wrong y, dx from uninitialised memory, abort
    assert again["path"] != built["path"], "the two definitions share a cache key"
    _assert_right(again, f"dims {second!r} after {first!r}")


# --- item 8: Numba's cache files are validated and rebuilt -----------------------------------

@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A cache filled by one process; a second process loads both kernels without compiling."""
    path = tmp_path_factory.mktemp("warm-cache")
    _run(path, "N C", "call")
    warm = _run(path, "N C", "call")
    _assert_right(warm, "warm start")
    assert all(hits >= 1 and misses == 0 for hits, misses in warm["stats"].values()), warm["stats"]
    return path


def _garble(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 200] = b"\xff" * 200
    path.write_bytes(bytes(data))


def _flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # Numba loaded this one as it was: changed machine code
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path):
    path.write_bytes(random.Random(0).randbytes(100))


CORRUPTIONS = {
    "nbc-garbled": ("nbc", _garble),
    "nbc-bit-flipped": ("nbc", _flip_a_bit),
    "nbc-truncated": ("nbc", _truncate),
    "nbc-deleted": ("nbc", Path.unlink),
    "nbi-random-bytes": ("nbi", _random_bytes),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_or_missing_numba_cache_file_is_compiled_again_and_rewritten(warm_cache, tmp_path, case):
    ext, corrupt = CORRUPTIONS[case]
    shutil.copytree(warm_cache, tmp_path, dirs_exist_ok=True)  # copy2: the mtimes Numba stamps stay
    pycache = tmp_path / "kernels" / "__pycache__"
    (target,) = pycache.glob(f"*_forward-*.{ext}")
    corrupt(target)
    out = _run(tmp_path, "N C", "call")  # was: raised on every run, or loaded the changed code
    _assert_right(out, case)
    hits, misses = out["stats"]["forward"]
    assert hits == 0 and misses >= 1, f"{case}: the bad forward cache was loaded ({out['stats']})"
    assert out["stats"]["backward"][0] >= 1, f"{case}: the good backward cache was not used"
    files = list(pycache.glob("*.nb[ic]"))
    assert len(files) == 4 and all(cache._read_sealed(f) is not None for f in files), \
        f"{case}: the cache was not rewritten whole: {sorted(f.name for f in files)}"


@pytest.mark.parametrize("how", ["read-only", "under-a-file"])
def test_unwritable_cache_dir_on_a_cold_start_compiles_in_a_temporary_dir_with_one_warning(tmp_path, how):
    if how == "under-a-file":
        (tmp_path / "file").write_text("")
        root = tmp_path / "file" / "cache"
        undo = None
    else:
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o555)
        undo = ["chmod", "755", str(root)]
        if os.geteuid() == 0:  # root writes through the mode bits; an immutable dir stops it
            if shutil.which("chattr") is None or \
                    subprocess.run(["chattr", "+i", str(root)], capture_output=True).returncode != 0:
                root.chmod(0o755)
                pytest.skip("running as root without chattr: no directory is read-only")
            undo = ["chattr", "-i", str(root)]
    try:
        res = _run(root, "N C", "call", check=False)  # was: a PermissionError traceback
    finally:
        if undo:
            subprocess.run(undo, check=True)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    _assert_right(json.loads(res.stdout.strip().splitlines()[-1]), how)
    warnings = [line for line in res.stderr.splitlines() if "cannot be written" in line]
    assert len(warnings) == 1 and str(root / "kernels") in warnings[0], res.stderr
    assert not (tmp_path / "ro").exists() or not any((tmp_path / "ro").iterdir())


def test_every_module_the_printer_imports_is_hashed_into_the_generator_version():
    """compiled/version.py hashes the printer's sources into every cache key (`_FILES`, kept by
    hand); a module the printer imports but the hash leaves out would let an edit to it reuse
    stale kernels. The runtime modules (loading, calling, caching kernels) print nothing."""
    import ast

    from symgrad.compiled import version

    here = Path(version.__file__).parent
    runtime = {"api.py", "blas.py", "cache.py", "threads.py", "version.py"}
    seen, todo = set(), ["build.py"]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for node in ast.walk(ast.parse((here / f).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                todo += [f"{n}.py" for n in names if f"{n}.py" not in runtime and (here / f"{n}.py").is_file()]
    assert len(seen) > 5, seen  # build.py, writer.py, lower.py and what they import
    assert seen <= set(version._FILES), f"not hashed into GENERATOR_VERSION: {sorted(seen - set(version._FILES))}"
