#!/usr/bin/env python3
"""Install MathJax 3 from the npm registry and copy the files the site needs into docs/assets/mathjax/.

The site typesets its formulas with a local MathJax, never a CDN, so it renders with no internet.
The files are not committed (docs/assets/mathjax/ is gitignored): the docs build calls `ensure()`
(from docs/hooks.py) and this script installs them when they are missing.

    python3 docs/fetch_assets.py            # install if missing
    python3 docs/fetch_assets.py --force    # reinstall

What is copied from the npm package `mathjax@3` (about 2 MB):
    es5/tex-chtml.js                        -> assets/mathjax/tex-chtml.js
    es5/input/tex/extensions/               -> assets/mathjax/input/tex/extensions/
    es5/output/chtml/fonts/woff-v2/         -> assets/mathjax/output/chtml/fonts/woff-v2/
MathJax finds the extensions and fonts relative to the URL it was loaded from.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

MATHJAX_VERSION = "3.2.2"
DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
TARGET = DOCS / "assets" / "mathjax"
NPM_PREFIX = ROOT / "build" / "docs-npm"  # gitignored (/build/)
COPIES = (
    ("es5/tex-chtml.js", "tex-chtml.js"),
    ("es5/input/tex/extensions", "input/tex/extensions"),
    ("es5/output/chtml/fonts/woff-v2", "output/chtml/fonts/woff-v2"),
)
STAMP = TARGET / "VERSION.json"


class AssetError(RuntimeError):
    pass


def installed_version(target: Path = TARGET) -> str | None:
    """The MathJax version copied into `target`, or None when the copy is missing or incomplete."""
    try:
        stamp = json.loads((target / "VERSION.json").read_text())
    except (OSError, ValueError):
        return None
    if not all((target / dst).exists() for _, dst in COPIES):
        return None
    return stamp.get("mathjax")


def _npm_install(prefix: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise AssetError("npm is not installed; the docs serve MathJax from the npm package "
                         f"mathjax@{MATHJAX_VERSION}. Install Node.js/npm (Debian: apt-get install npm) "
                         "and run python3 docs/fetch_assets.py")
    prefix.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(prefix),
           f"mathjax@{MATHJAX_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    package = prefix / "node_modules" / "mathjax"
    if proc.returncode != 0 or not (package / "es5" / "tex-chtml.js").exists():
        raise AssetError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return package


def ensure(force: bool = False, target: Path = TARGET, log=None) -> Path:
    """Make sure MathJax is copied into `target`; returns `target`. Raises AssetError on failure."""
    if not force and installed_version(target) == MATHJAX_VERSION:
        return target
    package = NPM_PREFIX / "node_modules" / "mathjax"
    version = None
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        pass
    if force or version != MATHJAX_VERSION:
        if log:
            log(f"installing mathjax@{MATHJAX_VERSION} from npm into {NPM_PREFIX}")
        package = _npm_install(NPM_PREFIX)
    tmp = NPM_PREFIX.parent / "docs-mathjax.tmp"  # gitignored, same filesystem
    shutil.rmtree(tmp, ignore_errors=True)
    for src, dst in COPIES:
        s, d = package / src, tmp / dst
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d)
        else:
            shutil.copy2(s, d)
    (tmp / "VERSION.json").write_text(json.dumps({"mathjax": MATHJAX_VERSION,
                                                   "source": f"npm package mathjax@{MATHJAX_VERSION}"}))
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)  # docs/assets/ is not in a fresh clone
    tmp.rename(target)
    if log:
        log(f"copied MathJax {MATHJAX_VERSION} into {target}")
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="reinstall even if the files are there")
    args = ap.parse_args(argv)
    try:
        ensure(force=args.force, log=print)
    except AssetError as e:
        print(f"fetch_assets: {e}", file=sys.stderr)
        return 1
    print(f"MathJax {installed_version()} is in {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
