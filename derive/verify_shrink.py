"""The smallest counterexample `derive.verify` can find for a wrong candidate: the failing
case's dims shrunk towards 1 and simple input values tried first, within SHRINK_BUDGET calls."""

from __future__ import annotations

import itertools
import math

from .errors import DeriveError
from .verify_candidates import _CandidateTimedOut
from .verify_cases import _Case, _valid
from .verify_report import Counterexample

SHRINK_BUDGET = 60  # candidate evaluations spent looking for a smaller counterexample


def _shrink(check, failing: _Case) -> Counterexample | None:
    """The smallest failing input found: dims shrunk towards 1, simple values tried first."""
    d = check.d
    syms = list(failing.dims)
    options = [sorted({1, 2, failing.dims[s]} & set(range(1, failing.dims[s] + 1))) for s in syms]
    configs = sorted(itertools.product(*options), key=lambda c: (math.prod(c), sum(c)))
    budget = SHRINK_BUDGET
    kinds = ["simple"] if failing.kind == "normal" else ["simple", failing.kind]
    try:
        for cfg in configs:
            dims = dict(zip(syms, cfg))
            if not _valid(d, dims):
                continue
            try:
                inst = check.instance(dims)
            except (DeriveError, ValueError, TypeError):
                continue
            for kind in kinds:
                for s in range(2):
                    if budget <= 0:
                        break
                    budget -= 1
                    case = _Case(failing.label if kind == failing.kind else "simple values",
                                 dims, kind, failing.seed * 7 + 13 * s + 1)
                    ce = check.counterexample(inst, case)
                    if ce is not None:
                        return ce
        return check.counterexample(check.instance(failing.dims), failing)
    except _CandidateTimedOut:  # the verdict stands; each further call could take as long
        return None
