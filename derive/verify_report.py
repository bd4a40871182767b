"""What `derive.verify` reports: one `CaseResult` per numeric case, the smallest `Counterexample`
of a wrong candidate, and the `VerifyReport` that holds them (`str(report)` reads as text,
`report.as_dict()` is JSON-ready). Nothing here computes a verdict; it only holds and prints one."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

VERDICTS = ("equivalent", "matches", "wrong", "error")


@dataclass
class CaseResult:
    """One numeric case: its shapes, the candidate's errors against the derived VJP and against
    finite differences, and the worst element."""

    label: str
    dims: dict
    max_abs: float
    max_rel: float
    fd_abs: float
    fd_mode: str
    ok: bool
    index: tuple | None = None

    def as_dict(self) -> dict:
        return {"label": self.label, "dims": self.dims, "max_abs_error": _num(self.max_abs),
                "max_rel_error": _num(self.max_rel), "fd_max_abs_error": _num(self.fd_abs),
                "fd_mode": self.fd_mode, "ok": self.ok,
                "worst_index": list(self.index) if self.index is not None else None}


@dataclass
class Counterexample:
    """The smallest input found on which the candidate disagrees with the derivation."""

    label: str
    dims: dict
    inputs: dict
    upstream: dict
    expected: np.ndarray
    got: np.ndarray
    index: tuple
    wrt: str = ""
    direction: dict = field(default_factory=dict)  # order 2: the direction v of H v
    quantity: str = ""  # what expected and got are: d<wrt> (the default), "Hv", "H"

    @property
    def what(self) -> str:
        return self.quantity or f"d{self.wrt}"

    @property
    def expected_value(self) -> float:
        return float(np.asarray(self.expected)[self.index])

    @property
    def got_value(self) -> float:
        return float(np.asarray(self.got)[self.index])

    def as_dict(self) -> dict:
        return {"case": self.label, "dims": self.dims,
                "inputs": {k: _list(v) for k, v in self.inputs.items()},
                "upstream": {k: _list(v) for k, v in self.upstream.items()},
                "direction": {k: _list(v) for k, v in self.direction.items()},
                "quantity": self.what, "expected": _list(self.expected), "got": _list(self.got),
                "index": list(self.index), "expected_value": _num(self.expected_value),
                "got_value": _num(self.got_value)}

    def __str__(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        lines = [f"counterexample ({self.label}; {dims}):"]
        for k, v in {**self.inputs, **self.upstream, **self.direction}.items():
            lines.append(_arr_line(k, v))
        lines.append(_arr_line(f"expected {self.what}", self.expected))
        lines.append(_arr_line(f"candidate {self.what}", self.got))
        at = ",".join(map(str, self.index))
        lines.append(f"  at {self.what}[{at}]: expected {self.expected_value:.10g}, "
                     f"candidate gave {self.got_value:.10g}")
        return "\n".join(lines)


@dataclass
class VerifyReport:
    """What `verify` found; `str(report)` reads as text, `report.as_dict()` is JSON-ready."""

    layer: str
    wrt: str
    verdict: str
    message: str
    kind: str = ""  # "sympy" | "function" | ""
    candidate: str = ""
    cases: list = field(default_factory=list)
    symbolic: str = ""  # what the symbolic check concluded
    difference: str | None = None  # derived - candidate (wrong SymPy candidates)
    counterexample: Counterexample | None = None
    settings: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # cases where the layer itself is not finite
    order: int = 1  # 2: a Hessian or HVP (derive.verify_order2)
    form: str = ""  # order 2: which candidate form was seen

    @property
    def ok(self) -> bool:
        """True when the candidate is right (equivalent or matches)."""
        return self.verdict in ("equivalent", "matches")

    @property
    def max_abs_error(self) -> float | None:
        vals = [c.max_abs for c in self.cases]
        return max(vals) if vals else None

    @property
    def max_rel_error(self) -> float | None:
        vals = [c.max_rel for c in self.cases]
        return max(vals) if vals else None

    @property
    def fd_max_abs_error(self) -> float | None:
        vals = [c.fd_abs for c in self.cases if c.fd_abs is not None]  # None: a case of ties
        return max(vals) if vals else None

    def as_dict(self) -> dict:
        return {"layer": self.layer, "wrt": self.wrt, "order": self.order, "verdict": self.verdict,
                "ok": self.ok, "message": self.message, "kind": self.kind, "form": self.form,
                "candidate": self.candidate,
                "errors": {self.wrt: {"max_abs_error": _num(self.max_abs_error),
                                      "max_rel_error": _num(self.max_rel_error),
                                      "fd_max_abs_error": _num(self.fd_max_abs_error)}},
                "symbolic": self.symbolic, "difference": self.difference,
                "cases": [c.as_dict() for c in self.cases],
                "counterexample": self.counterexample.as_dict() if self.counterexample else None,
                "skipped": list(self.skipped), "settings": self.settings}

    def __str__(self) -> str:
        what = f"d{self.wrt}" if self.order == 1 else f"d2/(d{self.wrt} d{self.wrt}) (order 2)"
        return "\n".join([f"verify {self.layer} {what}: {self.verdict.upper()}"] + self.details())

    def details(self, candidate: bool = True) -> list:
        """The report's lines after its head, each indented by two spaces (`candidate=False`
        leaves out the candidate's line)."""
        lines = [f"  {self.message}"]
        if self.candidate and candidate:
            lines.append(f"  candidate: {self.candidate}")
        if self.form:
            lines.append(f"  form: {self.form}")
        if self.symbolic:
            lines.append(f"  symbolic: {self.symbolic}")
        if self.difference is not None:
            lines.append(f"  derived - candidate = {self.difference}")
        if self.cases:
            ref, fd = ("VJP", "") if self.order == 1 else ("HVP", " of the derived VJP")
            lines.append(f"  numeric: {len(self.cases)} cases, max abs error "
                         f"{_fmt(self.max_abs_error)}, max rel error {_fmt(self.max_rel_error)} "
                         f"(vs the derived {ref}); vs finite differences{fd} "
                         f"{_fmt(self.fd_max_abs_error)}")
            for c in self.cases:
                dims = " ".join(f"{k}={v}" for k, v in c.dims.items())
                mark = "ok" if c.ok else "FAIL at [" + ",".join(map(str, c.index or ())) + "]"
                lines.append(f"    {c.label:<28} {dims:<24} abs {_fmt(c.max_abs)}  rel "
                             f"{_fmt(c.max_rel)}  fd {_fmt(c.fd_abs)} ({c.fd_mode})  {mark}")
        for note in self.skipped:
            lines.append(f"  skipped: {note}")
        if self.counterexample is not None:
            lines.extend("  " + ln for ln in str(self.counterexample).split("\n"))
        return lines


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _list(v):
    a = np.asarray(v)
    if a.dtype.kind in "iub":
        return a.tolist()
    return np.vectorize(_num, otypes=[object])(a).tolist() if a.size else a.tolist()


def _arr_line(name, v) -> str:
    a = np.asarray(v)
    body = np.array2string(a, precision=6, separator=", ", suppress_small=False,
                           max_line_width=1000, threshold=200)
    pad = " " * (len(name) + 5)
    return f"  {name} = " + body.replace("\n", "\n" + pad)
