"""The build-time generator of the symgrad site (called from docs/hooks.py).

    generate() -> Site: the generated pages {path under docs/: markdown}, the nav entries for them,
    and the warnings (a layer that fails to derive, a failed gradient or HVP check) that make
    `mkdocs build --strict` fail.

analysis.py computes what a page shows (a layer's derivation, costs, numeric checks, kernel
sources, second order; the optimizers' rules), pages.py prints it as Markdown.

Each page's "Second order" section compiles the layer's HVP kernel with Numba (a few seconds a
layer on a cold kernel cache, one core each), so `SecondOrderPool` computes them in worker
processes (SYMGRAD_DOCS_JOBS of them, default the CPU count; 1: in this process) while this one
does the first-order part of every page. Workers share the kernel and derivation caches on disk
(`$SYMGRAD_CACHE_DIR`) with this process and with the tests (tests/docs/test_site.py computes the same
sections); a lock per layer (analysis.layer_lock) makes a build and the tests running side by side
compile each kernel once between them.

Part of the docs, not of the product: nothing in derive/, compiled/ or models/ imports it.
"""

from __future__ import annotations

import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

from . import analysis, costs, gradcheck, pages

__all__ = ["generate", "SecondOrderPool", "Site", "analysis", "costs", "gradcheck", "pages"]


@dataclass
class Site:
    pages: dict = field(default_factory=dict)          # "layers/softmax.md" -> markdown
    layer_nav: list = field(default_factory=list)      # [{"softmax": "layers/softmax.md"}, ...]
    optimizer_nav: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    layers: list = field(default_factory=list)         # LayerInfo, in derive.layers() order
    seconds: float = 0.0


def jobs() -> int:
    env = os.environ.get("SYMGRAD_DOCS_JOBS", "").strip()
    return max(1, int(env)) if env else max(1, os.cpu_count() or 1)


class SecondOrderPool:
    """`with SecondOrderPool(names) as s: ... s.result(name)`: analysis.second_order_of(name) for
    each built-in layer, started in worker processes (spawned: no fork of a process that may run
    threads) when entered; `result` waits for one. With one job, or where processes cannot be
    started, each is computed in this process when asked for. A worker that dies is reported on
    the page and as a warning, like a check that raises."""

    def __init__(self, names, n_jobs: int | None = None):
        self.names, self.n_jobs = list(names), jobs() if n_jobs is None else n_jobs
        self.pool, self.futures = None, {}

    def __enter__(self):
        if self.n_jobs > 1 and self.names:
            try:
                self.pool = ProcessPoolExecutor(min(self.n_jobs, len(self.names)), get_context("spawn"))
                self.futures = {n: self.pool.submit(analysis.second_order_of, n) for n in self.names}
            except Exception:  # no processes here (a sandbox): compute in this process
                self.__exit__()
                self.pool, self.futures = None, {}
        return self

    def result(self, name):
        if name not in self.futures:
            return analysis.second_order_of(name)
        try:
            return self.futures[name].result()
        except Exception:
            err = traceback.format_exc()
            return analysis.SecondOrderInfo(error=err, warnings=[
                f"{name}: the worker computing its second order failed:\n{err}"])

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return False


def generate(only: list[str] | None = None) -> Site:
    """Generate every page. `only` restricts the layers (for development; the site needs all)."""
    from symgrad import derive
    t0 = time.perf_counter()
    site = Site()
    names = derive.layers()
    if only:
        missing = [n for n in only if n not in names]
        if missing:
            site.warnings.append(f"SYMGRAD_DOCS_LAYERS names unknown layers: {missing}")
        names = [n for n in names if n in only]
    with SecondOrderPool(names) as second:
        infos = [analysis.analyse(n, derive, second_order=False) for n in names]
        for i in infos:
            if i.derivation is not None:
                analysis.attach_second_order(i, second.result(i.name))
    by_name = {i.name: i for i in infos}
    for i in infos:
        if i.derivation is not None:
            for u in i.derivation.graph.uses:
                if u in by_name and i.name not in by_name[u].used_by:
                    by_name[u].used_by.append(i.name)
    for i in infos:
        site.pages[f"layers/{i.name}.md"] = pages.layer_page(i)
        site.layer_nav.append({i.name: f"layers/{i.name}.md"})
        site.warnings.extend(i.warnings)
    site.pages["layers/index.md"] = pages.index_page(infos)
    site.layers = infos

    opts, reason = analysis.discover_optimizers()
    for o in opts:
        site.pages[f"optimizers/{o.slug}.md"] = pages.optimizer_page(o)
        site.optimizer_nav.append({o.cls.__name__: f"optimizers/{o.slug}.md"})
        if o.error:
            site.warnings.append(f"optimizer {o.cls.__name__}: deriving rule '{o.rule}' raised:\n{o.error}")
    site.pages["optimizers/index.md"] = pages.optimizer_index(opts, reason)
    site.seconds = time.perf_counter() - t0
    return site
