"""The build-time generator of the symgrad site (called from docs/hooks.py).

    generate() -> Site: the generated pages {path under docs/: markdown}, the nav entries for them,
    and the warnings (a layer that fails to derive, a failed gradient check) that make
    `mkdocs build --strict` fail.

Part of the docs, not of the product: nothing in derive/, compiled/ or models/ imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import costs, gradcheck, pages

__all__ = ["generate", "Site", "costs", "gradcheck", "pages"]


@dataclass
class Site:
    pages: dict = field(default_factory=dict)          # "layers/softmax.md" -> markdown
    layer_nav: list = field(default_factory=list)      # [{"softmax": "layers/softmax.md"}, ...]
    optimizer_nav: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    layers: list = field(default_factory=list)         # LayerInfo, in derive.layers() order
    seconds: float = 0.0


def layer_names(derive) -> list[str]:
    names = derive.layers
    if not callable(names):  # `import derive.layers.x` can shadow the function with the subpackage
        from derive import registry
        return list(registry.names())
    return list(names())


def generate(only: list[str] | None = None) -> Site:
    """Generate every page. `only` restricts the layers (for development; the site needs all)."""
    import derive

    t0 = time.perf_counter()
    site = Site()
    names = layer_names(derive)
    if only:
        missing = [n for n in only if n not in names]
        if missing:
            site.warnings.append(f"SYMGRAD_DOCS_LAYERS names unknown layers: {missing}")
        names = [n for n in names if n in only]
    infos = [pages.analyse(n, derive) for n in names]
    by_name = {i.name: i for i in infos}
    for i in infos:
        if i.derivation is not None:
            for u in getattr(i.derivation.graph, "uses", []) or []:
                if u in by_name and i.name not in by_name[u].used_by:
                    by_name[u].used_by.append(i.name)
    known = set(by_name)
    for i in infos:
        site.pages[f"layers/{i.name}.md"] = pages.layer_page(i, known)
        site.layer_nav.append({i.name: f"layers/{i.name}.md"})
        site.warnings.extend(i.warnings)
    site.pages["layers/index.md"] = pages.index_page(infos)
    site.layers = infos

    opts, reason = pages.discover_optimizers()
    for o in opts:
        site.pages[f"optimizers/{o.slug}.md"] = pages.optimizer_page(o)
        site.optimizer_nav.append({o.cls.__name__: f"optimizers/{o.slug}.md"})
        if o.error:
            site.warnings.append(f"optimizer {o.cls.__name__}: deriving rule '{o.rule}' raised:\n{o.error}")
    site.pages["optimizers/index.md"] = pages.optimizer_index(opts, reason)
    site.seconds = time.perf_counter() - t0
    return site
