"""A time budget for one derivation, and progress while it runs.

SymPy can take very long on a large definition (a deep nesting of elementwise functions), and a
definition that has not finished says nothing. `derive.define(name, build, budget=SECONDS,
progress=...)` therefore runs the derivation under a `Budget`:

- the limit is `budget` seconds, else `$SYMGRAD_DERIVE_BUDGET`, else DEFAULT_SECONDS; 0 or a
  negative value means no limit;
- past the limit the derivation stops with a `DeriveError` naming the binding it was at;
- `progress` is None (a line per step to stderr, once the derivation has run PROGRESS_AFTER
  seconds), False (silent) or a callable `progress(layer, about, stage, elapsed)` called at
  every step from the start.

The chain rule reports where it is (`at`); the slow passes inside it (fold, tidy, the delta
elimination) call `check()` between their SymPy calls. A single SymPy call can itself run for
minutes, so in the main thread a SIGALRM timer also interrupts it at the deadline (unless the
caller already uses SIGALRM, which is then left alone and only the checks apply).
"""

from __future__ import annotations

import contextvars
import math
import os
import signal
import sys
import threading
import time

from .errors import DeriveError

DEFAULT_SECONDS = 60.0
PROGRESS_AFTER = 5.0
ENV = "SYMGRAD_DERIVE_BUDGET"

_active = contextvars.ContextVar("derive_budget", default=None)


class _OverBudget(BaseException):
    """Raised by the timer inside SymPy; a BaseException so that no `except Exception` in
    SymPy swallows it. Budget turns it into the DeriveError."""


def seconds_from(budget, layer="derive") -> float:
    """The limit in seconds (inf: none) from an argument, the environment, or the default."""
    if budget is None:
        raw = os.environ.get(ENV, "").strip()
        try:
            budget = float(raw) if raw else DEFAULT_SECONDS
        except ValueError:
            raise DeriveError(layer, f"{ENV}={raw!r} is not a number of seconds") from None
    budget = float(budget)
    return math.inf if budget <= 0 or math.isnan(budget) else budget


class Budget:
    """`with Budget(layer, seconds, progress): ...` runs a derivation under a time limit."""

    def __init__(self, layer: str, seconds=None, progress=None):
        self.layer = layer
        self.seconds = seconds_from(seconds, layer)
        self.progress = progress
        self.about, self.stage = "", "definition"
        self.start = time.monotonic()
        self._token = self._alarm = None

    # --- reports from the derivation ---------------------------------------------------------
    def at(self, about: str, stage: str):
        """The derivation has reached `stage` for binding or argument `about`."""
        self.about, self.stage = about, stage
        self.check()
        elapsed = time.monotonic() - self.start
        if callable(self.progress):
            self.progress(self.layer, about, stage, elapsed)
        elif self.progress is None and elapsed >= PROGRESS_AFTER:
            print(f"derive {self.layer}: {stage} '{about}' ({elapsed:.0f} s of "
                  f"{self._limit_text()})", file=sys.stderr, flush=True)

    def check(self):
        if time.monotonic() - self.start > self.seconds:
            raise self.error()

    def error(self) -> DeriveError:
        where = f" at '{self.about}' ({self.stage})" if self.about else " before the first binding"
        return DeriveError(self.layer, f"the derivation ran past its time budget of "
                                       f"{self._limit_text()}{where}; give more with "
                                       f"derive.define(..., budget=SECONDS) or {ENV}=SECONDS")

    def _limit_text(self):
        return "no limit" if math.isinf(self.seconds) else f"{self.seconds:g} s"

    # --- the context ---------------------------------------------------------------------------
    def __enter__(self):
        self.start = time.monotonic()
        self._token = _active.set(self)
        if not math.isinf(self.seconds) and threading.current_thread() is threading.main_thread() \
                and hasattr(signal, "setitimer") and signal.getsignal(signal.SIGALRM) in \
                (signal.SIG_DFL, None) and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0):
            self._alarm = signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def _on_alarm(self, signum, frame):
        if self._alarm is not None:  # not once __exit__ has begun
            raise _OverBudget()

    def __exit__(self, kind, value, tb):
        alarm, self._alarm = self._alarm, None
        if alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, alarm)
        _active.reset(self._token)
        if kind is _OverBudget:
            raise self.error() from None
        return False


def at(about: str, stage: str):
    """Report progress to the active budget (none outside derive.define: nothing happens)."""
    b = _active.get()
    if b is not None:
        b.at(about, stage)


def check():
    """Stop with a DeriveError if the active budget is spent."""
    b = _active.get()
    if b is not None:
        b.check()
