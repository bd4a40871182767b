"""`symgrad verify FILE.py:FUNCTION --layer NAME --wrt ARG [--order 2] [--json]`: check a
hand-derived gradient, or a hand-derived Hessian / Hessian-vector product.

FUNCTION names a function `candidate(g, **inputs)` in FILE.py, or a SymPy expression (or a
string of one) defined there. `--layer` is a built-in layer name, or `FILE.py:BUILD` for a layer
defined by a `build(G)` forward definition (see `derive.define`). `--wrt x,W,b` checks a backward
pass returning several gradients at once: the function returns a tuple (dx, dW, db) in that
order (or FUNCTION is a tuple of SymPy expressions); each is judged, and the report is RIGHT only
if all are (see `derive.verify_many`).

`--order 2` checks the (ARG, ARG) block of the Hessian of sum(g * y) instead (see
`derive.verify_order2`): FUNCTION is an HVP `candidate(g, v, **inputs)` returning H v for a
direction v shaped like ARG, or, for a layer with a scalar output, the full Hessian
`candidate(**inputs)` shaped ARG.shape + ARG.shape (told apart by whether it takes `v`), or a
SymPy Hessian in index form. It is compared with the derived HVP kernel and with finite
differences of the derived VJP; the report says which form it saw. One --wrt name only.

Exit status: 0 the candidate is right (equivalent or matches), 1 it is wrong, 2 bad input or
no verdict (file, function, layer or argument missing, candidate raising, calling sys.exit,
running past --timeout or returning the wrong shape). The status is the verdict whatever happens
to stdout: a reader that leaves early (`| head -1`) or a full disk does not change it.
Errors are one line on stderr; the report goes to stdout (as JSON with --json).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys

from symgrad.usage import Parser, UsageError


def _parser():
    p = Parser(prog="symgrad verify", description="Check a hand-derived gradient (or, with "
                "--order 2, Hessian) against the derivation: symbolic equivalence where it can "
                "be decided, numbers always, and a counterexample when it is wrong.")
    p.add_argument("candidate", metavar="FILE.py:FUNCTION",
                   help="a function candidate(g, **inputs) -> ndarray, or a SymPy expression "
                        "(--order 2: candidate(g, v, **inputs) -> H v, or candidate(**inputs) "
                        "-> the full Hessian for a scalar output)")
    p.add_argument("--layer", required=True, help="built-in layer name, or FILE.py:BUILD")
    p.add_argument("--wrt", required=True,
                   help="the argument the candidate differentiates by; or several, x,W,b, for a "
                        "candidate returning a tuple of their gradients in that order")
    p.add_argument("--order", type=int, default=1, choices=(1, 2),
                   help="1: a gradient (the default); 2: a Hessian-vector product or Hessian "
                        "by --wrt (one name)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--eps", type=float, default=1e-6, help="finite-difference step (1e-6)")
    p.add_argument("--atol", type=float, default=1e-5, help="finite-difference atol (1e-5)")
    p.add_argument("--rtol", type=float, default=1e-3, help="finite-difference rtol (1e-3)")
    p.add_argument("--trials", type=int, default=4, help="random cases besides the edge cases (4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds one call of a function candidate may take (60)")
    p.add_argument("--dtype", default="float64", help="must be float64")
    return p


def _split(spec: str, what: str):
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UsageError(f"{what} must look like FILE.py:NAME, got '{spec}'")
    return path, name


def load(spec: str, what: str = "candidate"):
    """The object NAME from FILE.py for a FILE.py:NAME spec; UsageError with one line otherwise."""
    path, name = _split(spec, what)
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    mod_name = "_symgrad_user_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    spec_ = importlib.util.spec_from_file_location(mod_name, path)
    if spec_ is None or spec_.loader is None:
        raise UsageError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec_)
    sys.modules[mod_name] = module
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        spec_.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"cannot import {path}: SyntaxError: {e.msg} (line {e.lineno})") from None
    except BaseException as e:  # noqa: BLE001 - a user file may raise anything, even SystemExit
        if isinstance(e, KeyboardInterrupt):
            raise
        raise UsageError(f"importing {path} raised {type(e).__name__}: {e}") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    if not hasattr(module, name):
        defined = sorted(n for n, v in vars(module).items()
                         if not n.startswith("_") and (callable(v) or hasattr(v, "free_symbols"))
                         and getattr(v, "__module__", mod_name) == mod_name)
        raise UsageError(f"{path} has no {what} '{name}'"
                        + (f" (it defines: {', '.join(defined)})" if defined else ""))
    return getattr(module, name)


def _layer(spec: str):
    if spec.endswith(".py") or ".py:" in spec:
        from symgrad import derive
        build = load(spec, "layer definition")
        if not callable(build):
            raise UsageError(f"{spec} is not a function build(G)")
        return derive.define(spec.rpartition(":")[2], build)
    return spec


def main(argv) -> int:
    from symgrad.derive.errors import DeriveError
    from symgrad.derive.verify import verify

    try:
        args = _parser().parse_args(list(argv))
    except UsageError as e:
        print(f"symgrad verify: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    out = sys.stdout
    try:
        # the user's code may print; keep stdout clean for the report (and for --json)
        with contextlib.redirect_stdout(sys.stderr):
            target = _layer(args.layer)
            candidate = load(args.candidate)
            report = verify(target, args.wrt, candidate, order=args.order, eps=args.eps,
                            atol=args.atol, rtol=args.rtol, trials=args.trials, seed=args.seed,
                            dtype=args.dtype, timeout=args.timeout)
    except (UsageError, DeriveError) as e:
        print(f"symgrad verify: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # the layer's build(G) exited: nothing was judged, so never 0
        print(f"symgrad verify: the user's code called sys.exit({e.code!r}) before a verdict",
              file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - no traceback reaches the user
        print(f"symgrad verify: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    code = 2 if report.verdict == "error" else 0 if report.ok else 1
    if args.json:
        _emit(out, json.dumps(report.as_dict(), indent=2), code)
    elif report.verdict != "error":
        _emit(out, str(report), code)
    if report.verdict == "error":
        print(f"symgrad verify: {report.message}", file=sys.stderr)
    return code


def _emit(stream, text: str, code: int):
    """Write the report and flush it now, so that a failure shows here and not at exit. A reader
    that left (BrokenPipeError) or a full disk must not change the exit status, which is the
    verdict: the stream is pointed at /dev/null so the interpreter's own flush at exit cannot
    fail either (that would exit 120)."""
    try:
        stream.write(text + "\n")
        stream.flush()
    except OSError as e:
        with contextlib.suppress(OSError, ValueError):  # ValueError: a stream without a file
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, stream.fileno())
            os.close(null)
        if not isinstance(e, BrokenPipeError):
            print(f"symgrad verify: cannot write the report: {e.strerror or e} (exit status "
                  f"{code} is the verdict)", file=sys.stderr)
