"""What the generated pages show, computed once per build: for each layer its derivation, FLOP
counts, numeric gradient check, printed kernel and second order (derive.second_order's steps,
the HVP kernel, its numeric check); the optimizers and their update rules.

This is the part of the site generator that derives and compiles (the HVP kernels with Numba, a
few seconds a layer on a cold cache) and runs the checks; a failure is kept with its traceback
and reported as a warning, which fails the strict build. The pages (pages.py) only print it.
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import costs, gradcheck

# --- the kernel ---------------------------------------------------------------------------

@dataclass
class Kernel:
    source: str | None
    path: str | None
    reason: str | None  # why there is no source


def kernel_source(name: str, dtype: str = "float64") -> Kernel:
    """The generated Numba source of a layer, from `compiled.kernels(name, dtype).source_path`
    (what printing or compiling it raised, when it did)."""
    from symgrad import compiled
    try:
        path = compiled.kernels(name, dtype=dtype).source_path
        return Kernel(Path(path).read_text(), path, None)
    except Exception as e:
        return Kernel(None, None, f"`compiled.kernels({name!r}, dtype={dtype!r})` raised "
                                  f"{type(e).__name__}: {e}")


# --- second order ---------------------------------------------------------------------------

@dataclass
class SecondOrderInfo:
    """What a page's "Second order" section shows: derive.second_order's steps, the printed HVP
    kernel (float64) and its numeric check."""

    so: object = None
    error: str | None = None          # derive.second_order raised: the traceback
    kernel: Kernel | None = None      # the HVP kernel module ...
    kernel_func: str | None = None    # ... and the function in it the section shows
    check: gradcheck.CheckResult | None = None
    check_error: str | None = None    # the HVP kernel or its check raised
    warnings: list = field(default_factory=list)


def _failures(check_name: str, check: gradcheck.CheckResult, arg: str, derived: str) -> list[str]:
    """The warning of a numeric check that failed, none of one that passed: each argument off
    (`arg.format(name)`), where, and both values (`derived`: what the finite differences met)."""
    bad = [a for a in check.args if not a.ok]
    if not bad:
        return []
    return [f"{check_name} FAILED for " + "; ".join(f"{arg.format(a.arg)} at {a.worst_index}: finite difference "
                                                     f"{a.fd!r}, {derived} {a.derived!r}" for a in bad)]


def second_order_info(d) -> SecondOrderInfo:
    """derive.second_order(d), compiled.second_order.second_order_kernels(d, "float64") and the
    numeric check of its H v (gradcheck.run_hvp). A derivation, kernel or check that raises, or a
    check that fails, is a warning (the strict build fails) and shown on the page."""
    info = SecondOrderInfo()
    name = d.name
    try:
        from symgrad.derive.second_order import second_order
        info.so = second_order(d)
    except Exception:
        info.error = traceback.format_exc()
        info.warnings.append(f"{name}: derive.second_order raised; its page shows the traceback:\n"
                             f"{info.error}")
        return info
    from symgrad.compiled.second_order import second_order_kernels
    try:
        k = second_order_kernels(d, "float64")
        path = k.hvp_kernels.source_path
        info.kernel = Kernel(Path(path).read_text(), str(path), None)
        info.kernel_func = k.hvp_kernels.forward_spec.func
        info.check = gradcheck.run_hvp(d, k.hvp)
        info.warnings += _failures(f"{name}: numeric HVP check", info.check, "(H v) for {}", "HVP kernel")
    except Exception:
        info.check_error = traceback.format_exc()
        if info.kernel is None:
            info.kernel = Kernel(None, None, f"`second_order_kernels({name!r}, \"float64\")` raised")
        info.warnings.append(f"{name}: the HVP kernel or its numeric check raised:\n{info.check_error}")
    return info


# --- one layer ----------------------------------------------------------------------------

@dataclass
class LayerInfo:
    """Everything a layer page shows, computed once per build."""

    name: str
    derivation: object = None
    error: str | None = None         # derive.layer(name) raised: the traceback
    forward: costs.Cost | None = None
    backward: costs.Cost | None = None
    cost_error: str | None = None
    check: gradcheck.CheckResult | None = None
    check_error: str | None = None    # the check raised
    kernel: Kernel | None = None
    second: SecondOrderInfo | None = None
    used_by: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def summary(self) -> str:
        if self.derivation is None:
            return ""
        doc = (self.derivation.doc or "").strip().splitlines()
        return doc[0] if doc else ""


def second_order_of(name: str) -> SecondOrderInfo:
    """second_order_info of a built-in layer, by name (what a worker process of
    sitegen.generate runs), one process at a time per layer (`layer_lock`)."""
    from symgrad import derive
    with layer_lock(name):
        return second_order_info(derive.layer(name))


@contextlib.contextmanager
def layer_lock(name: str):
    """An exclusive lock on `<kernel cache>/../docs-locks/<name>.lock`: when a site build and the
    docs tests run side by side on one cache, the second to reach a layer waits, then finds its
    second-order derivation and HVP kernel in the caches instead of compiling them again. No
    lock (no fcntl, a cache that cannot be written) is no wait."""
    handle = None
    try:
        import fcntl

        from symgrad.compiled.cache import cache_dir

        locks = cache_dir().parent / "docs-locks"
        locks.mkdir(parents=True, exist_ok=True)
        handle = open(locks / f"{name}.lock", "w")
        fcntl.flock(handle, fcntl.LOCK_EX)
    except Exception:
        if handle is not None:
            handle.close()
        handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def analyse(name: str, derive, second_order: bool = True) -> LayerInfo:
    """Everything a layer page shows. `second_order=False` leaves `info.second` for the caller
    (sitegen.generate computes it in worker processes)."""
    info = LayerInfo(name)
    try:
        d = derive.layer(name)
    except Exception:
        info.error = traceback.format_exc()
        info.warnings.append(f"derive.layer({name!r}) raised; its page shows the traceback:\n"
                             f"{info.error}")
        return info
    info.derivation = d
    try:
        info.forward = costs.forward_cost(d)
        info.backward = costs.backward_cost(d)
    except Exception:
        info.cost_error = traceback.format_exc()
        info.warnings.append(f"{name}: counting FLOPs failed:\n{info.cost_error}")
    try:
        info.check = gradcheck.run(d)
        info.warnings += _failures(f"{name}: numeric gradient check", info.check, "d{}", "derived")
    except Exception:
        info.check_error = traceback.format_exc()
        info.warnings.append(f"{name}: the numeric gradient check raised:\n{info.check_error}")
    info.kernel = kernel_source(name)
    if second_order:
        attach_second_order(info, second_order_info(d))
    return info


def attach_second_order(info: LayerInfo, second: SecondOrderInfo) -> None:
    info.second = second
    info.warnings.extend(second.warnings)



# --- optimizers ---------------------------------------------------------------------------

@dataclass
class OptimizerInfo:
    slug: str
    cls: type
    names: list
    rule: str
    derivation: object = None
    error: str | None = None


def discover_optimizers():
    """(infos, reason): the optimizer classes of models.optim's OPTIMIZERS registry {name: class},
    each with its update rule's derivation (models.rules), or why there are none."""
    try:
        from symgrad.models import rules
        from symgrad.models.optim import OPTIMIZERS
    except Exception as e:
        return [], f"models.optim: {type(e).__name__}: {e}"
    by_cls: dict = {}
    for name, cls in OPTIMIZERS.items():
        by_cls.setdefault(cls, []).append(name)
    infos = []
    for cls, names in by_cls.items():
        info = OptimizerInfo(cls.__name__.lower(), cls, names, cls.rule)
        try:
            info.derivation = rules.rule(info.rule)
        except Exception:
            info.error = traceback.format_exc()
        infos.append(info)
    return infos, None


