"""A kernel cache of the tests' own (SYMGRAD_CACHE_DIR), set for a `with` and restored after."""

import os
from contextlib import contextmanager


@contextmanager
def kernel_cache_at(path):
    old = os.environ.get("SYMGRAD_CACHE_DIR")
    os.environ["SYMGRAD_CACHE_DIR"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("SYMGRAD_CACHE_DIR", None)
        else:
            os.environ["SYMGRAD_CACHE_DIR"] = old
