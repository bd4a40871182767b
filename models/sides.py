"""The sides of a benchmark, each in a process of its own, timed in interleaved rounds.

A comparison (symgrad's training step against PyTorch's, a kernel against its PyTorch op) runs
each side in a fresh process, as its users run it: symgrad's thread pool (Numba's TBB) and
PyTorch's (GNU OpenMP) never share one. In one process they did interfere: with Intel OpenMP
(then MKL's) loaded first and KMP_BLOCKTIME=0 set for it, PyTorch eager's GPT step took ~70 ms
instead of ~45 (2-vCPU AMD EPYC VM, 2026-12-06), which flattered every ratio measured that way.
The processes take turns: while one side runs a round, the others wait on their pipes, so the
VM's speed regime, which changes within seconds, is shared by the rounds being compared.

    with Sides({"symgrad": ("symgrad.models.bench:symgrad_calls", (cfg, 12, 2)),
                "eager": ("symgrad.models.bench:torch_calls", ("eager", cfg, weights, 12, 2))}) as s:
        s["symgrad"].time("step", 10)   # seconds per call, 10 calls
        s["eager"].ask("info")          # a call's return value

A side is built in its process by `module:function(*args)`, which returns {name: callable}.
`time(name, n)` runs the callable n times and returns the seconds per call; `ask(name)` returns
what one call returns (sent back pickled). A failure in the process is raised here as a
`SideError` with the side's own traceback. `memory_mark()` / `memory_growth()`, called in the
side's process, give its peak-RSS growth from the mark on (the side's own weights, state and
code, without the imports every process pays).
"""

from __future__ import annotations

import importlib
import multiprocessing
import resource
import time
import traceback


def _status_mib(field):
    """VmRSS / VmHWM of this process from /proc (Linux), MiB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


_MARK: list = []


def memory_mark():
    """Take this process's RSS as the baseline of `memory_growth`, its peak reset to it where
    Linux allows (/proc/self/clear_refs 5), so that the imports' transient peak does not hide
    a smaller side; elsewhere the baseline is getrusage's peak so far."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_mib("VmRSS")
    except OSError:
        base = None
    _MARK[:] = [base if base is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]


def memory_growth() -> float:
    """Peak RSS (MiB) since `memory_mark`, over the baseline it took."""
    peak = _status_mib("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak - _MARK[0]


class SideError(RuntimeError):
    """A side's process failed (building its calls, or in one of them)."""


def _serve(conn, target, args):
    """The side's process: build its calls, then answer requests until told to stop."""
    try:
        module, function = target.split(":")
        calls = getattr(importlib.import_module(module), function)(*args)
        conn.send(("ready", None))
    except BaseException:  # noqa: BLE001  (sent to the parent, which raises it)
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        req = conn.recv()
        if req is None:
            return
        name, n = req
        try:
            fn = calls[name]
            if n is None:
                out = fn()
            else:
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                out = (time.perf_counter() - t0) / n
            conn.send(("ok", out))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class Side:
    """One side's process (see the module docstring)."""

    def __init__(self, name, target, args, timeout=1800):
        self.name, self.timeout = name, timeout
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, target, tuple(args)), daemon=True,
                                 name=f"bench side {name}")
        self._proc.start()
        child.close()
        self._reply("starting")

    def _reply(self, what):
        if not self._conn.poll(self.timeout):
            self.close()
            raise SideError(f"side '{self.name}': no answer to {what} within {self.timeout} s")
        try:
            status, value = self._conn.recv()
        except EOFError:
            code = self._proc.join(5) or self._proc.exitcode
            raise SideError(f"side '{self.name}': its process ended (exit code {code}) during {what}") from None
        if status == "error":
            last = value.strip().splitlines()[-1]
            raise SideError(f"side '{self.name}', {what}: {last}\n{value}")
        return value

    def time(self, name, n) -> float:
        """Seconds per call of `name`, over n calls back to back."""
        self._conn.send((name, int(n)))
        return self._reply(name)

    def ask(self, name):
        """What one call of `name` returns."""
        self._conn.send((name, None))
        return self._reply(name)

    def close(self):
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


class Sides(dict):
    """{name: Side}, started in order from {name: (target, args)}; all closed on leaving the
    `with` (also on an error or Ctrl-C)."""

    def __init__(self, specs: dict):
        super().__init__()
        try:
            for name, (target, args) in specs.items():
                self[name] = Side(name, target, args)
        except BaseException:
            self.close()
            raise

    def add(self, name, target, args):
        self[name] = Side(name, target, args)
        return self[name]

    def close(self):
        for s in self.values():
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Side", "Sides", "SideError", "memory_mark", "memory_growth"]
