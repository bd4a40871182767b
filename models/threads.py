"""How many threads a printed step runs on: chosen by measurement, step by step.

On an idle 2-core machine a training step is fastest on both cores; when other processes hold
the cores, every parallel region (a BLAS call, a `prange` loop) waits for its slowest thread,
which may not be scheduled for milliseconds, and one thread is faster — by 10x and more for
small products (a batch-1 forward while sampling). No fixed rule gets both right, and the
machine's load changes while a run goes on, so each `Step` keeps its own `ThreadTuner`: the
count with the lowest recent time runs, another count is tried now and then, and a call that
suddenly takes much longer is followed by a try at once, so a machine that becomes busy is
followed within a few steps and one that becomes idle again within a few hundred.
"""

from __future__ import annotations

_current = [None]  # the count last set in this process (setting it costs a few library calls)
_most = [None]  # the cap set by set_most (None: every core this process may use)


def available() -> int:
    """Cores this process may use (compiled.threads.cores)."""
    from symgrad.compiled.threads import cores
    return cores()


def set_most(n: int | None):
    """Cap the thread count of every step (`symgrad bench train --threads N`); None: no cap."""
    _most[0] = None if n is None else max(1, int(n))
    _current[0] = None


def most() -> int:
    return _most[0] or available()


def use(n: int):
    if _current[0] != n:
        from symgrad import compiled
        _current[0] = compiled.set_threads(n)


class ThreadTuner:
    """Picks a thread count in 1..most for each call and learns from the time it took: the
    first call at each count is a warm-up (kernels load) and not counted; the estimate of a
    count is the median of its last `window` calls.

    Exploring costs a call at the slower count (on the idle 2-core machine a 1-thread GPT step
    is ~20 ms slower: every 32 steps, 0.7 ms a step), so the gap between explorations doubles,
    from `explore` calls up to `longest`, while they confirm the best count. It falls back to
    `explore` when an exploration finds another best or a faster call than the best's (the
    machine became idle: the next call tries again), and the next call explores when two calls
    in a row at the best count take over `jump` times its estimate (the machine became busy).
    One slow call is not enough: the first call after a pause (an evaluation, another process's
    turn in `symgrad bench train`) runs on cold caches, and exploring after each of those cost
    the bench's rounds 3 ms a step (25.8 ms median against 22.6 steady, 2026-12-07)."""

    def __init__(self, explore: int = 32, window: int = 3, longest: int = 512, jump: float = 1.5, apply=None):
        self.explore, self.window, self.longest, self.jump = explore, window, longest, jump
        self.apply = use if apply is None else apply  # what a chosen count does (a sharded step: its own)
        self.samples: dict[int, list] = {}  # count -> seconds of its last calls
        self.warm: set = set()
        self.calls = 0
        self.gap = explore  # calls between explorations
        self.next = explore  # the call that explores next
        self.exploring = False
        self.slow = 0  # calls in a row at the best count over `jump` times its estimate
        self.n = most()

    @property
    def time(self) -> dict:
        """count -> estimated seconds per call."""
        return {n: sorted(s)[len(s) // 2] for n, s in self.samples.items() if s}

    @property
    def settled(self) -> bool:
        """Every count measured `window` times: past the first calls, which alternate counts."""
        return all(len(self.samples.get(n, ())) >= self.window for n in self.candidates())

    @property
    def best(self) -> int:
        """The count with the lowest estimate (the one that runs between explorations)."""
        est = self.time
        return min(self.candidates(), key=lambda n: est.get(n, float("inf")))

    def choose(self) -> int:
        self.calls += 1
        cands = self.candidates()
        short = [n for n in cands if len(self.samples.get(n, ())) < self.window]
        self.exploring = False
        if short:  # measure every count a few times first, alternating
            self.n = min(short, key=lambda n: (len(self.samples.get(n, ())), cands.index(n)))
        else:
            best = self.best
            others = [n for n in cands if n != best]
            if others and self.calls >= self.next:
                self.n = others[(self.calls // self.explore) % len(others)]
                self.exploring = True
            else:
                self.n = best
        self.apply(self.n)
        return self.n

    def record(self, seconds: float):
        if self.n not in self.warm:
            self.warm.add(self.n)
            return
        before = self.best if self.exploring else None
        s = self.samples.setdefault(self.n, [])
        expected = self.time.get(self.n)
        s.append(seconds)
        del s[:-self.window]
        if self.exploring:
            if self.best == before and seconds < self.time[before]:
                self.gap, self.next = self.explore, self.calls + 1  # faster now: try it again
            else:
                self.gap = min(2 * self.gap, self.longest) if self.best == before else self.explore
                self.next = self.calls + self.gap
        elif expected is not None and seconds > self.jump * expected and self.n == self.best:
            self.slow += 1
            if self.slow >= 2:
                self.gap, self.next, self.slow = self.explore, self.calls + 1, 0
        else:
            self.slow = 0

    def candidates(self):
        m = most()
        return [m, 1] if m > 1 else [1]


__all__ = ["ThreadTuner", "available", "most", "set_most", "use"]
