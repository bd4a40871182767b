"""Helpers for a user's own pytest suite.

    from symgrad.testing import assert_gradient

    def test_my_layernorm_backward():
        assert_gradient("layernorm", "x", my_layernorm_dx)   # fails with the whole report

    def test_my_linear_backward():                           # (dx, dW, db) at once
        assert_gradient("linear", "x,W,b", my_linear_backward)
"""

from __future__ import annotations


def assert_gradient(target, wrt: str, candidate, *, require_equivalent: bool = False, **options):
    """Check a hand-derived gradient with `derive.verify.verify`; raise AssertionError with the
    report as the message unless it is right (`equivalent` or `matches`; only `equivalent` with
    `require_equivalent=True`). `wrt` may name several arguments, "x,W,b", for a candidate
    returning their gradients as a tuple: it passes only if every one is right. Returns the report.
    `options` go to `verify` (eps, atol, rtol, trials, seed, dtype, shapes, indices)."""
    from symgrad.derive.verify import verify

    report = verify(target, wrt, candidate, **options)
    if not report.ok:
        raise AssertionError(str(report))
    if require_equivalent and report.verdict != "equivalent":
        raise AssertionError("not proved symbolically (require_equivalent=True)\n" + str(report))
    return report


__all__ = ["assert_gradient"]
