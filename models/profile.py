"""Where a printed step's time goes: seconds per kernel function (`linear.backward`, ...).

A printed step (`models.step`) calls the layers' kernels through its module's globals, looked
up at each call; while `profile.enabled` is true those globals are timing wrappers around the
kernels, in every step module loaded. Off, the step runs the kernels directly (no cost).

    profile.reset(); profile.enabled = True
    ...train...
    profile.enabled = False
    for name, seconds, calls in profile.table(): ...
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict


class _Profile:
    def __init__(self):
        self._enabled = False
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._saved: dict = {}  # (module name, global) -> the kernel

    def reset(self):
        self.seconds.clear()
        self.calls.clear()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool):
        on = bool(on)
        if on == self._enabled:
            return
        self._enabled = on
        if on:
            for mname, mod in list(sys.modules.items()):
                if mname.startswith("symgrad_steps.") and hasattr(mod, "KERNELS"):
                    for g, label in mod.KERNELS.items():
                        self._saved[(mname, g)] = getattr(mod, g)
                        setattr(mod, g, self._timed(getattr(mod, g), label))
        else:
            for (mname, g), fn in self._saved.items():
                setattr(sys.modules[mname], g, fn)
            self._saved.clear()

    def _timed(self, fn, label):
        def call(*args):
            t0 = time.perf_counter()
            r = fn(*args)
            self.seconds[label] += time.perf_counter() - t0
            self.calls[label] += 1
            return r
        return call

    def table(self) -> list[tuple[str, float, int]]:
        return sorted(((k, s, self.calls[k]) for k, s in self.seconds.items()), key=lambda r: -r[1])


profile = _Profile()

__all__ = ["profile"]
