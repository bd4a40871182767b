"""The fuzzer (tests/fuzz/) in the suite: a short budgeted run over fixed seeds finds no crash
and no disagreement, and the generator is a pure function of its seed.

The seeds that fail on today's main are listed in KNOWN with the fault each one hits (found by
the fuzzer while issue #11 was being fixed); they are left out of the budgeted run, and each has a
strict xfail of its own that turns into a failure once its fault is fixed (then remove the entry).
A longer run: `python -m tests.fuzz --budget 1200`.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.cache_dir import kernel_cache_at

from tests import fuzz

SEEDS = range(0, 40)  # checked in order until the budget is spent
BUDGET_S = 30.0  # the whole file stays under 2 minutes on 2 slow cores (the suite: 10)
MIN_OK = 3  # a run that checks nothing cannot pass

# seed -> (a pattern its reason matches on today's main, the fault): strict xfails that raise
# KnownFault only when the case still fails in the known way (any other failure is a failure).
# Empty: the faults the fuzzer found while issue #11 was fixed (windows on an inner axis, float
# index arithmetic, sp.Max in the reference, ...) are fixed, each with a test of its own.
KNOWN: dict = {}


# seeds of the 20-minute runs that found a fault, fixed since: each must stay ok (or a clean
# refusal). Seeds renumber when the generator changes; then replace them with their sources.
FIXED = {152452960: "fold solved h = Max(mm, 0) as mm = h (a wrong ReLU gradient)",
         152452665: "a product temporary overwrote a saved output of its name",
         154640202: "sp.solve raised ValueError (a Max it could not compare) out of derive.define"}


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", list(FIXED))
def test_fuzz_case_once_found_failing_stays_fixed(seed, kernel_cache):
    r = fuzz.check(fuzz.generate(seed), timeout=60.0)
    assert r.kind in ("ok", "refused"), f"seed {seed} ({FIXED[seed]}): {r.kind}: {r.reason}"


class KnownFault(Exception):
    """A KNOWN case failed the way it is known to fail."""


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    """The fuzzer's kernels go to a cache of their own, removed with the test's tmp dir."""
    with kernel_cache_at(tmp_path_factory.mktemp("fuzz-cache")) as path:
        yield path


def test_generator_is_deterministic_per_seed_and_seeds_differ():
    cases = [fuzz.generate(s) for s in range(60)]
    assert cases == [fuzz.generate(s) for s in range(60)]
    assert len({c.source for c in cases}) == len(cases)
    families = {step for c in cases for step in c.family.split("+")}
    assert families == set(fuzz.Generator.STEPS), families  # every kind of step is generated


def test_every_generated_definition_builds_a_graph():
    from symgrad import derive
    for s in range(60):
        case = fuzz.generate(s)
        g = derive.Graph(case.name)
        try:
            case.builder()(g)
        except derive.DeriveError:
            assert case.invalid, case.source  # only a deliberately invalid one may be refused
            continue
        assert g.outputs, case.source


@pytest.mark.fuzz
def test_fuzz_short_budget_finds_no_crash_and_no_disagreement(kernel_cache):
    t0 = time.perf_counter()
    results = fuzz.run([s for s in SEEDS if s not in KNOWN], BUDGET_S, timeout=40.0)
    bad = [r for r in results if r.kind in ("crash", "disagree")]
    report = fuzz.summary(results, time.perf_counter() - t0)
    print(report)
    assert not bad, report
    assert sum(r.kind == "ok" for r in results) >= MIN_OK, report


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", [pytest.param(s, marks=pytest.mark.xfail(strict=True, raises=KnownFault,
                                                                          reason=why))
                                  for s, (_, why) in KNOWN.items()])
def test_fuzz_case_that_fails_on_main(seed, kernel_cache):
    r = fuzz.check(fuzz.generate(seed), timeout=40.0)
    if r.kind in ("ok", "refused"):
        return  # fixed: the strict xfail reports XPASS, and the entry in KNOWN should go
    assert re.search(KNOWN[seed][0], r.reason), f"seed {seed} now fails differently: {r.kind}: {r.reason}"
    raise KnownFault(f"seed {seed}: {r.kind}: {r.reason}")
