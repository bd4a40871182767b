"""`symgrad docs build|serve`: the derivation site (MkDocs, mkdocs.yml at the repository root).

    symgrad docs build [--site-dir DIR] [--no-strict]   build into site/ (strict: any warning fails)
    symgrad docs serve [--dev-addr 127.0.0.1:8000]      live preview

The layer and optimizer pages are generated at build time by docs/hooks.py from derive/; MathJax
is installed from the npm package into docs/assets/mathjax/ when missing (docs/fetch_assets.py).
The figures (loss curves from the runs recorded in docs/data/, optimizer trajectories) are drawn
with matplotlib at build time; re-record a run with `python3 -m docs.figures record gpt|mlp`.
Needs a source checkout (mkdocs.yml and docs/) and the `docs` extra.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from symgrad.usage import Parser, UsageError

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "mkdocs.yml"
# mkdocs-material and properdocs print notices about MkDocs 2 on every run; they are not ours.
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def _parser():
    p = Parser(prog="symgrad docs", description="Build or serve the derivation site.")
    sub = p.add_subparsers(dest="action", metavar="build|serve")
    b = sub.add_parser("build", help="build the site (mkdocs build --strict)")
    b.add_argument("--site-dir", default=None, help="output folder (default: site/)")
    b.add_argument("--no-strict", action="store_true", help="do not fail on warnings")
    s = sub.add_parser("serve", help="serve a live preview")
    s.add_argument("--dev-addr", default="127.0.0.1:8000", help="address:port (default 127.0.0.1:8000)")
    return p


def mkdocs_command(action: str, site_dir=None, strict=True, dev_addr=None) -> list[str]:
    cmd = [sys.executable, "-m", "mkdocs", action, "-f", str(CONFIG)]
    if action == "build":
        if strict:
            cmd.append("--strict")
        if site_dir:
            cmd += ["-d", str(Path(site_dir).resolve())]
    elif action == "serve" and dev_addr:
        cmd += ["-a", dev_addr]
    return cmd


def environment() -> dict:
    """mkdocs' environment: quiet about MkDocs 2. Nothing on PYTHONPATH: symgrad.derive and the
    rest come from the install, and the API pages from docs/hooks.py's build/api tree."""
    return dict(os.environ, **QUIET)


def _run(cmd) -> int:
    """Run mkdocs as a child; Ctrl-C or SIGTERM stops the child too (no orphaned server)."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() \
        else None
    proc = subprocess.Popen(cmd, cwd=ROOT, env=environment())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        print(f"symgrad docs: {e}", file=sys.stderr)
        return 2
    if args.action is None:
        print("symgrad docs: choose build or serve (symgrad docs build --help)", file=sys.stderr)
        return 2
    if not CONFIG.exists() or not (ROOT / "docs" / "hooks.py").exists():
        print(f"symgrad docs: needs a source checkout with mkdocs.yml and docs/ (looked in {ROOT})",
              file=sys.stderr)
        return 2
    for mod, extra in (("mkdocs", "mkdocs"), ("material", "mkdocs-material")):
        if importlib.util.find_spec(mod) is None:
            print(f"symgrad docs: {extra} is not installed; pip install -e '.[docs]'", file=sys.stderr)
            return 2
    if args.action == "build":
        cmd = mkdocs_command("build", args.site_dir, strict=not args.no_strict)
    else:
        cmd = mkdocs_command("serve", dev_addr=args.dev_addr)
    t0 = time.perf_counter()
    rc = _run(cmd)
    if rc == 130:
        return rc
    if args.action == "build":
        where = args.site_dir or ROOT / "site"
        if rc == 0:
            print(f"symgrad docs: built {where} in {time.perf_counter() - t0:.1f} s")
        else:
            print(f"symgrad docs: mkdocs build failed (exit {rc}); see the warnings above",
                  file=sys.stderr)
            return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
