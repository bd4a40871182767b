"""The thread-count policy of the printed steps: the faster count wins, the other is retried
now and then, so a machine that becomes busy (or idle again) is followed."""

from symgrad.models import threads
from symgrad.models.threads import ThreadTuner


def test_tuner_follows_the_faster_count_and_keeps_exploring(monkeypatch):
    monkeypatch.setattr(threads, "use", lambda n: None)
    monkeypatch.setattr(threads, "most", lambda: 2)
    t = ThreadTuner(explore=8)
    cost = {2: 0.010, 1: 0.018}  # idle: two threads are faster
    seen = []
    for step in range(200):
        if step == 100:
            cost = {2: 0.120, 1: 0.025}  # other processes take the cores: one thread is faster
        n = t.choose()
        seen.append(n)
        t.record(cost[n])
    idle, busy = seen[20:100], seen[120:]
    assert idle.count(2) > 0.8 * len(idle) and 1 in idle  # mostly 2, 1 retried now and then
    assert busy.count(1) > 0.8 * len(busy) and 2 in busy
    assert seen[100:112].count(1) >= 3  # switched within a few steps


def test_tuner_with_one_core_never_asks_for_two(monkeypatch):
    monkeypatch.setattr(threads, "use", lambda n: None)
    monkeypatch.setattr(threads, "most", lambda: 1)
    t = ThreadTuner()
    assert {t.choose() for _ in range(100)} == {1}


def test_tuner_explores_less_while_the_best_count_holds(monkeypatch):
    """Each exploration runs a call at the slower count: on a steady machine they thin out
    (the gap doubles up to `longest`), and an idle machine is found again within it."""
    monkeypatch.setattr(threads, "use", lambda n: None)
    monkeypatch.setattr(threads, "most", lambda: 2)
    t = ThreadTuner(explore=8, longest=128)
    cost = {2: 0.120, 1: 0.025}  # busy: one thread is faster
    seen = []
    for step in range(3000):
        if step == 2000:
            cost = {2: 0.010, 1: 0.018}  # idle again: the best count (1) does not slow down
        n = t.choose()
        seen.append(n)
        t.record(cost[n])
    assert 5 <= seen[100:2000].count(2) <= 25  # 8, 16, 32, 64, then every 128 calls
    assert seen[2000 + 130:].count(2) > 0.95 * len(seen[2130:])  # found within `longest` calls
    assert t.best == 2


def test_one_slow_call_is_not_a_busy_machine_but_two_in_a_row_are(monkeypatch):
    """The first call after a pause runs on cold caches: no exploration for it alone."""
    monkeypatch.setattr(threads, "use", lambda n: None)
    monkeypatch.setattr(threads, "most", lambda: 2)
    t = ThreadTuner(explore=1000, longest=1000)
    assert not t.settled  # nothing measured yet: the first calls alternate counts
    cost = {2: 0.010, 1: 0.018}
    seen = []
    for step in range(400):
        slow = step % 10 == 0 and step >= 100  # a cold first call in each round of 10
        busy = 300 <= step < 303  # then three slow calls in a row
        n = t.choose()
        seen.append(n)
        t.record(cost[n] * (2.0 if (slow or busy) and n == 2 else 1.0))
    assert t.settled and seen[100:300].count(1) == 0  # never explored after a single slow call
    assert 1 in seen[300:305]  # explored right after the second slow call
