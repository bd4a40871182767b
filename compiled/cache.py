"""The kernel cache: one real `.py` file per (layer, dtype), imported so `njit(cache=True)` works.

Layout: `<cache dir>/kernels/<layer>_<dtype>_<key>.py`, where key hashes the expressions, dtype
and generator version (`build.layer_key`); Numba keeps its compiled code beside it in
`__pycache__`. The cache dir is `$SYMGRAD_CACHE_DIR`, else `$XDG_CACHE_HOME/symgrad`, else
`~/.cache/symgrad`.

Files are written to a temporary name and `os.replace`d into place, so a reader sees either no
file or a whole one, and two processes building the same kernel cannot interleave their writes.
The second line of each file is `# content-sha256: <hash of the rest>`; a file whose content
does not match (truncated, edited, corrupted) is rebuilt, never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

_HASH_PREFIX = "# content-sha256: "


def cache_dir() -> Path:
    env = os.environ.get("SYMGRAD_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = Path(xdg) / "symgrad" if xdg else Path.home() / ".cache" / "symgrad"
    path = root / "kernels"
    path.mkdir(parents=True, exist_ok=True)
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
    return mod


def sibling_module(here, stem: str):
    """The kernel module `stem` from the cache folder that holds the file `here` (how a printed
    training step imports the kernels it calls); the name is the one `compiled.kernels` gives it."""
    return import_file(Path(here).parent / f"{stem}.py", f"symgrad_kernels.{stem}")


__all__ = ["sibling_module", "cache_dir", "ensure", "import_file", "write_atomic", "seal", "unseal", "read_valid"]
