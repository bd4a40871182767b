"""The generator version: part of every cache key.

`GENERATOR_VERSION` is the release number plus a hash of the printer's own source files, so
any change to how kernels are printed yields new cache keys (no stale kernel survives an
upgrade or a local edit)."""

import hashlib
from pathlib import Path

_RELEASE = "1"
_FILES = ("printer.py", "nest.py", "products.py", "bounds.py", "accumulations.py", "lower.py", "block.py",
          "helpers.py", "hoist.py", "parallel.py", "writer.py", "build.py", "elementary.py")


def _source_hash() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for f in _FILES:
        h.update((here / f).read_bytes())
    return h.hexdigest()[:8]


GENERATOR_VERSION = f"{_RELEASE}.{_source_hash()}"
