"""On-disk cache of built-in derivations, keyed by the source of derive/ and the SymPy version.

Any edit to derive/ changes the key, so a stale derivation is never read; an unreadable file is
derived again and rewritten (temp file + rename, so concurrent writers cannot corrupt it).
The directory is `$SYMGRAD_CACHE_DIR/derivations` (default `~/.cache/symgrad/derivations`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import sympy


def canonical(x) -> str:
    """A text that differs when x differs: SymPy objects by srepr (assumptions included),
    dataclasses field by field. Anything else by repr, so an object without a stable repr
    only costs a rebuild, never a stale hit."""
    if isinstance(x, sympy.Basic):
        return sympy.srepr(x)
    if dataclasses.is_dataclass(x):
        return type(x).__name__ + "(" + ",".join(f"{f.name}={canonical(getattr(x, f.name))}"
                                                 for f in dataclasses.fields(x)) + ")"
    if isinstance(x, dict):
        return "{" + ",".join(f"{canonical(k)}:{canonical(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(canonical(v) for v in x) + "]"
    return repr(x)


def cache_root() -> Path:
    """Where symgrad caches: $SYMGRAD_CACHE_DIR, else $XDG_CACHE_HOME/symgrad, else
    ~/.cache/symgrad (derivations here, kernels in compiled.cache)."""
    env = os.environ.get("SYMGRAD_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "symgrad" if xdg else Path.home() / ".cache" / "symgrad"


def cache_dir() -> Path:
    return cache_root() / "derivations"


@functools.cache
def source_key() -> str:
    h = hashlib.sha256(sympy.__version__.encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def load_or_derive(name: str, derive_fn):
    path = cache_dir() / f"{name}-{source_key()}.pickle"
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError):
        pass
    result = derive_fn()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(result, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache directory only costs the time to derive again
    return result
