"""The kernel cache: one real `.py` file per (layer, dtype), imported so `njit(cache=True)` works.

Layout: `<cache dir>/kernels/<layer>_<dtype>_<key>.py`, where key hashes everything the file is
printed from (`build.layer_key`: the derivation, dtype, generator version, BLAS); Numba keeps its
compiled code beside it in `__pycache__`. The cache dir is derive.cache.cache_root():
`$SYMGRAD_CACHE_DIR`, else `$XDG_CACHE_HOME/symgrad`, else `~/.cache/symgrad`.

Files are written to a temporary name and `os.replace`d into place, so a reader sees either no
file or a whole one, and two processes building the same kernel cannot interleave their writes.
The second line of each file is `# content-sha256: <hash of the rest>`; a file whose content
does not match (truncated, edited, corrupted) is rebuilt, never imported.

Numba's own cache files (`__pycache__/*.nbi`, `*.nbc`) are sealed the same way (`SealedCacheFile`):
one that does not match is compiled again and rewritten, never loaded. A cache dir that cannot be
written is replaced, for this process, by a temporary one (one warning line on stderr).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

from numba.core.caching import IndexDataCacheFile
from numba.core.dispatcher import Dispatcher

_HASH_PREFIX = "# content-sha256: "
_scratch: dict = {}  # a cache dir that cannot be written -> the temporary one used instead


def cache_dir() -> Path:
    from symgrad.derive.cache import cache_root
    path = cache_root() / "kernels"
    if path in _scratch:
        return _scratch[path]
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # a real write: root ignores the mode bits
    except OSError as e:
        # a read-only cache (a shared install, a full disk) must not stop a run: compile into a
        # directory of our own and say so once
        tmp = Path(tempfile.mkdtemp(prefix="symgrad-kernels-"))
        atexit.register(shutil.rmtree, tmp, True)
        print(f"symgrad: warning: the kernel cache {path} cannot be written ({e.strerror or e}); "
              f"kernels compile in {tmp} for this run only", file=sys.stderr)
        _scratch[path] = tmp
        return tmp
    return path


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def seal(source: str) -> str:
    """The file text: first line of source, the content hash line, then the rest."""
    first, _, rest = source.partition("\n")
    return f"{first}\n{_HASH_PREFIX}{_digest(first + chr(10) + rest)}\n{rest}"


def unseal(text: str):
    """The source if the hash line matches, else None."""
    first, _, tail = text.partition("\n")
    line, _, rest = tail.partition("\n")
    if not line.startswith(_HASH_PREFIX):
        return None
    if line[len(_HASH_PREFIX):].strip() != _digest(first + "\n" + rest):
        return None
    return first + "\n" + rest


def read_valid(path: Path):
    try:
        return unseal(path.read_text())
    except (OSError, UnicodeDecodeError):
        return None


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def ensure(path: Path, make_source) -> tuple[str, bool]:
    """The valid source at path, building it (atomically) when missing or corrupt.
    Returns (source, rebuilt)."""
    src = read_valid(path) if path.exists() else None
    if src is not None:
        return src, False
    src = make_source()
    write_atomic(path, seal(src))
    return src, True


def import_file(path: Path, module_name: str):
    """Import a generated kernel file as a real module (in sys.modules before exec, which
    Numba's cache locator needs to find the file again in the next process)."""
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    for obj in vars(mod).values():  # before the first call: that is when Numba reads its cache
        if isinstance(obj, Dispatcher) and obj.py_func.__module__ == module_name and \
                type(getattr(obj._cache, "_cache_file", None)) is IndexDataCacheFile:
            obj._cache._cache_file.__class__ = SealedCacheFile  # same state, sealed I/O
    return mod


_SEAL = b"symgrad-sha256:"


class SealedCacheFile(IndexDataCacheFile):
    """Numba's index (.nbi) and data (.nbc) file of one function, with a SHA-256 of the content
    in front of each.

    Numba unpickles these files and links the machine code in them as they are: a garbled or
    truncated file raised on every later run, a flipped bit loaded changed code or segfaulted.
    Here a file whose seal does not match (or one written before seals) reads as absent, so
    Numba compiles again and writes it anew: the cache heals on the next call.
    """

    @contextlib.contextmanager
    def _open_for_write(self, filepath):
        buf = io.BytesIO()  # Numba writes into this; the file gets the seal line and the bytes
        yield buf
        payload = buf.getvalue()
        with super()._open_for_write(filepath) as f:
            f.write(_SEAL + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)

    def _load_index(self):  # Numba's own, reading through the seal
        data = _read_sealed(self._index_path)
        if data is None:
            return {}
        f = io.BytesIO(data)
        if pickle.load(f) != self._version:
            return {}
        stamp, overloads = pickle.loads(f.read())
        return overloads if stamp == self._source_stamp else {}

    def _load_data(self, name):
        data = _read_sealed(self._data_path(name))
        if data is None:  # load() takes an OSError for a missing file: compile again
            raise OSError(f"{self._data_path(name)}: missing, or its seal does not match")
        return pickle.loads(data)


def _read_sealed(path):
    """The bytes after the seal line if they match it, else None."""
    try:
        with open(path, "rb") as f:
            head, _, payload = f.read().partition(b"\n")
    except OSError:
        return None
    return payload if head == _SEAL + hashlib.sha256(payload).hexdigest().encode() else None


def sibling_module(here, stem: str):
    """The kernel module `stem` from the cache folder that holds the file `here` (how a printed
    training step imports the kernels it calls); the name is the one `compiled.kernels` gives it.
    A module of that name already loaded is the one: the stem holds the key, a hash of everything
    the file is printed from, so it is the same kernel even when it was loaded from another cache
    folder (SYMGRAD_CACHE_DIR changed within the process after the kernel was loaded)."""
    name = f"symgrad_kernels.{stem}"
    return sys.modules.get(name) or import_file(Path(here).parent / f"{stem}.py", name)


__all__ = ["sibling_module", "cache_dir", "ensure", "import_file", "write_atomic", "seal", "unseal", "read_valid",
           "SealedCacheFile"]
