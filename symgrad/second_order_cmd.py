"""`symgrad bench hvp` and `symgrad bench newton`: what the whole-model HVP (models.hvp) costs
against PyTorch's double backward, and what Newton-CG on it buys against Adam and L-BFGS.

    symgrad bench hvp [--rounds R] [--steps S] [--threads N] [--batch B] [--json]
    symgrad bench newton [--gap G] [--max-passes P] [--json]

`bench newton` runs multinomial logistic regression (models.newton.logistic_data) twice: on
well-conditioned features and on correlated features spread over two orders of magnitude,
each method from the same start, and prints the passes over the data each needs to reach the
optimum's loss within --gap (models.newton.compare).
"""

from __future__ import annotations

import json
import os

from symgrad.usage import Parser, UsageError

from .train_cmd import _fail, _positive_int


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise UsageError(f"expected a number, got '{s}'") from None
    if not v > 0 or v != v or v == float("inf"):
        raise UsageError(f"expected a finite number > 0, got {s}")
    return v


def _parse(p, argv, prog):
    try:
        return p.parse_args(list(argv))
    except UsageError as e:
        _fail(prog, e)
        return None


def bench_hvp_main(argv) -> int:
    p = Parser(prog="symgrad bench hvp",
               description="The reference GPT's Hessian-vector product (loss, gradient and H v) against "
                           "PyTorch's double backward, each in a process of its own, interleaved in rounds: "
                           "the ratio with its spread.")
    p.add_argument("--rounds", type=_positive_int, default=5)
    p.add_argument("--steps", type=_positive_int, default=3, help="HVPs per round and side")
    p.add_argument("--threads", type=_positive_int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--batch", type=_positive_int, default=None, help="sequences per batch (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = _parse(p, argv, "symgrad bench hvp")
    if a is None:
        return 2
    from symgrad.models import bench_hvp
    from symgrad.models.sides import SideError
    try:
        res = bench_hvp.run(a, batch=a.batch or bench_hvp.BATCH)
    except SideError as e:  # its first line names the side and what failed (torch not installed)
        return _fail("symgrad bench hvp", str(e).splitlines()[0])
    print(bench_hvp.report(res, a.json))
    return 0


def bench_newton_main(argv) -> int:
    p = Parser(prog="symgrad bench newton",
               description="Newton-CG on whole-model HVPs against Adam (several learning rates) and SciPy's "
                           "L-BFGS on multinomial logistic regression: passes over the data to the optimum.")
    p.add_argument("--gap", type=_positive_float, default=1e-8, help="distance to the optimum's loss (1e-8)")
    p.add_argument("--max-passes", type=_positive_int, default=3000, help="budget per method (3000)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = _parse(p, argv, "symgrad bench newton")
    if a is None:
        return 2
    from symgrad.models import newton
    out = {}
    for label, decades in (("well-conditioned features", 0.0), ("correlated features over 2 decades", 2.0)):
        x, y = newton.logistic_data(decades=decades)

        def make():
            return newton.Objective(newton.logistic_regression(x, y), x, y)
        res = newton.compare(make, gap=a.gap, max_passes=a.max_passes)
        out[label] = res
        if not a.json:
            print(f"multinomial logistic regression, {x.shape[0]} x {x.shape[1]}, {int(y.max()) + 1} classes, "
                  f"{label}:")
            print(newton.table(res))
            print()
    if a.json:
        for res in out.values():
            del res["max_passes"]
        print(json.dumps(out, indent=2))
    return 0


__all__ = ["bench_hvp_main", "bench_newton_main"]
