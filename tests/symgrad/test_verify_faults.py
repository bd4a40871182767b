"""Issue #11, item 5: `symgrad verify` never passes what it did not check. A candidate that
exits or never returns gets the error verdict (exit 2), and the exit status is the verdict
whatever happens to stdout (a reader that leaves early, a full disk)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from symgrad.cli import main as symgrad_main
from tests.verify_cli import candidates_file, run_cli

ROOT = Path(__file__).resolve().parents[2]

CANDIDATES = textwrap.dedent('''
    import sys
    import time

    import numpy as np

    def _softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def right(g, x):
        s = _softmax(x)
        return s * (g - (g * s).sum(-1, keepdims=True))

    def wrong(g, x):
        return g * _softmax(x)

    def exits(g, x):
        sys.exit(0)

    def never_returns(g, x):
        while True:
            try:
                time.sleep(5)
            except Exception:  # a careless candidate: the time limit must still stop it
                pass
''')


@pytest.fixture
def cand(tmp_path):
    return candidates_file(tmp_path, CANDIDATES, "cand.py")


def verify_cli(capsys, *argv):
    return run_cli(capsys, symgrad_main, "verify", *argv, "--layer", "softmax", "--wrt", "x")


def verify_process(*argv, stdout):
    """`python -m symgrad verify ...` with its stdout on the given file descriptor."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "symgrad", "verify", *argv, "--layer", "softmax",
                           "--wrt", "x"], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_candidate_calling_sys_exit_0_is_an_error_verdict_not_a_pass(cand, capsys):
    code, out, err = verify_cli(capsys, f"{cand}:exits")
    assert code == 2, (out, err)
    assert out == "" and err.count("\n") == 1 and "called sys.exit(0)" in err, err


def test_candidate_that_never_returns_is_stopped_by_the_per_call_time_limit(cand, capsys):
    t0 = time.perf_counter()
    code, out, err = verify_cli(capsys, f"{cand}:never_returns", "--timeout", "0.3")
    assert code == 2 and "did not return within 0.3 s" in err and err.count("\n") == 1, err
    assert time.perf_counter() - t0 < 30


def test_timeout_must_be_a_positive_number(cand, capsys):
    code, _, err = verify_cli(capsys, f"{cand}:right", "--timeout", "0")
    assert code == 2 and "must be a finite number of seconds" in err and err.count("\n") == 1


def test_wrong_verdict_written_into_a_closed_pipe_still_exits_1(cand):
    # `symgrad verify ... | head -1` where head has already left: every write to stdout fails
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = verify_process(f"{cand}:wrong", stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 1, proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_right_verdict_with_stdout_on_a_full_disk_still_exits_0(cand):
    with open("/dev/full", "w") as full:
        proc = verify_process(f"{cand}:right", stdout=full)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and "No space left on device" in proc.stderr
