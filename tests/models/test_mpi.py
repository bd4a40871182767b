"""Data-parallel training under mpirun (models/distributed.py): 2 ranks give the one-process loss
trajectory and bit-identical parameters; a killed rank stops the job within seconds and its last
checkpoint resumes under another number of ranks; ranks started differently are refused.

The runs go through `mpirun --oversubscribe -n 2` as a subprocess (root needs the two
OMPI_ALLOW_RUN_AS_ROOT* variables, set here). Without Open MPI's mpirun or mpi4py those tests
skip, saying which is missing; the tests of the one-process path run everywhere."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from symgrad.models import checkpoint, distributed

ROOT = Path(__file__).resolve().parents[2]


def _missing():
    if shutil.which("mpirun") is None:
        return "Open MPI's mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    return None


needs_mpi = pytest.mark.skipif(_missing() is not None, reason=f"MPI tests skipped: {_missing()}")

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
MPIRUN = ["mpirun", "--oversubscribe"]
TRAIN = [sys.executable, "-m", "symgrad", "train", "gpt", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
         "--block-size", "16", "--batch-size", "12", "--no-progress", "--sample-tokens", "0"]


def run(cmd, timeout=300):
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def history(path):
    return np.array(checkpoint.load(path)["meta"]["history"])[:, 1]


# --- the one-process path (no MPI needed) -----------------------------------------------------
@pytest.mark.parametrize("B, K", [(12, 2), (7, 2), (5, 3), (3, 3), (12, 5)])
def test_rank_rows_partition_the_batch_in_order(B, K):
    rows = [distributed._rows(B, K, r) for r in range(K)]
    assert rows[0][0] == 0 and rows[-1][1] == B
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert max(hi - lo for lo, hi in rows) - min(hi - lo for lo, hi in rows) <= 1


def test_without_a_launcher_the_world_is_one_process_and_imports_no_mpi(monkeypatch):
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distributed, "_WORLD", [])
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # an import would fail
    w = distributed.world()
    assert isinstance(w, distributed.Local) and w.size == 1 and w.root
    assert w.reduce(1.5, False) == (1.5, False) and w.average(2.0) == 2.0


def test_launched_with_ranks_but_without_mpi4py_is_one_line(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "_WORLD", [])
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(distributed.DistributedError, match=r"2 ranks.*pip install -e '\.\[mpi\]'"):
        distributed.world()


# --- under mpirun ---------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("batch, steps", [(12, 50), (7, 20)], ids=["equal-slices", "unequal-slices"])
def test_two_ranks_follow_the_one_process_trajectory_with_identical_parameters(tmp_path, batch, steps):
    """Global batch 12 over 2 ranks (6 rows each) against batch 12 in one process, 50 AdamW steps,
    gradients clipped by their global norm; batch 7 (4 + 3 rows, weighted) likewise."""
    from tests.models import mpi_train
    one, two = tmp_path / "one", tmp_path / "two"
    mpi_train.main(one, steps, batch)  # here, in one process
    r = run(MPIRUN + ["-n", "2", sys.executable, "-m", "tests.models.mpi_train", str(two), str(steps), str(batch)])
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = history(one), history(two)
    assert len(a) == len(b) == steps
    worst = int(np.argmax(np.abs(a - b)))
    print(f"max per-step |loss difference| over {steps} steps: {abs(a[worst] - b[worst]):.2e}")
    assert abs(a[worst] - b[worst]) <= 1e-5, (f"step {worst + 1}: one process {a[worst]:.7f}, "
                                              f"2 ranks {b[worst]:.7f}")
    r0, r1 = (np.load(two / f"state.{r}.npy") for r in (0, 1))
    assert r0.tobytes() == r1.tobytes(), (f"{int(np.sum(r0 != r1))} of {r0.size} parameter/state values "
                                          f"differ between the ranks")
    np.testing.assert_allclose(r0, np.load(one / "state.0.npy"), atol=1e-4)


def _rank_pids(mpirun_pid) -> dict:
    """rank -> pid of the processes mpirun started (read from /proc)."""
    pids = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == mpirun_pid:
            for e in env:
                if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                    pids[int(e.split(b"=")[1])] = int(d.name)
    return pids


def _alive(pid) -> bool:
    """Running (not gone, nor a zombie waiting to be reaped now that mpirun is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@needs_mpi
def test_killing_a_rank_stops_the_other_and_the_last_checkpoint_resumes_under_one_process(tmp_path, capsys):
    out = tmp_path / "run"
    p = subprocess.Popen(MPIRUN + ["-n", "2"] + TRAIN + ["--steps", "100000", "--eval-interval", "20",
                                                         "--out", str(out)],
                         cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "ckpt.npz").exists():
            assert p.poll() is None, f"the run stopped early:\n{p.stdout.read()}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        pids = _rank_pids(p.pid)
        assert sorted(pids) == [0, 1], pids
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        try:
            rc = p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("rank 0 still runs 10 s after rank 1 was killed")
        waited = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    log = p.stdout.read()
    t_log = time.monotonic() - t0
    assert rc != 0, log
    assert not _alive(pids[0]), "rank 0 outlived the job"
    assert "rank 1" in log, log
    print(f"the job stopped {waited:.1f} s after rank 1 was killed (its output closed after {t_log:.1f} s)")
    ck = checkpoint.load(out)  # valid: written atomically
    s = ck["meta"]["step"]
    assert s >= 20 and s % 20 == 0
    # resumed by one process (K = 1), it continues the uninterrupted run's loss curve
    from symgrad.train_cmd import train_main
    assert train_main(["gpt", "--resume", str(out), "--steps", str(s + 10), "--no-progress",
                       "--sample-tokens", "0"]) == 0
    assert f"resuming {out / 'ckpt.npz'} at step {s}" in capsys.readouterr().out
    full = tmp_path / "full"
    assert train_main(TRAIN[4:] + ["--steps", str(s + 10), "--eval-interval", "20", "--out", str(full)]) == 0
    a, b = history(full), history(out)
    assert len(a) == len(b) == s + 10
    assert np.abs(a - b).max() <= 1e-5, np.abs(a - b).max()


@needs_mpi
def test_ranks_started_with_different_arguments_are_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    args = ["--steps", "3", "--out", str(out)]
    r = run(MPIRUN + ["-n", "1"] + TRAIN + args + [":", "-n", "1"] + TRAIN + args + ["--lr", "0.002"])
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith("symgrad train:")]
    assert lines == ["symgrad train: error: the ranks were started with different configurations: rank 1 has "
                     "config.train.lr=0.002, rank 0 config.train.lr=0.001; start every rank with the same "
                     "arguments"], r.stdout + r.stderr
    assert not (out / "ckpt.npz").exists()


@needs_mpi
def test_parameters_that_drift_apart_stop_training_at_the_checkpoint(tmp_path):
    r = run(MPIRUN + ["-n", "2", sys.executable, "-m", "tests.models.mpi_train", str(tmp_path), "4", "12", "1"])
    assert r.returncode != 0, r.stdout + r.stderr
    assert "step 4: the parameters on rank 1 differ from rank 0's" in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "ckpt.npz").exists()
