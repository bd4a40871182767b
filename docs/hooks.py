"""MkDocs hook (mkdocs.yml: `hooks: [docs/hooks.py]`): generates the per-layer and per-optimizer
pages from derive/ at build time and installs the local MathJax.

- on loading: build/api/symgrad is the installed namespace as mkdocstrings (griffe) reads it:
  symgrad/'s modules with derive/, compiled/ and models/ linked in as symgrad.derive,
  symgrad.compiled and symgrad.models (pyproject.toml maps them so when installing; griffe reads
  folders, not the install's mapping). mkdocs.yml points mkdocstrings there.
- on_pre_build: MathJax 3 is copied into docs/assets/mathjax/ from the npm package when missing
  (docs/fetch_assets.py); no CDN is ever used.
- on_files: docs/sitegen generates layers/*.md and optimizers/*.md (never written to disk) and
  expands the `Layers` and `Optimizers` nav entries into one entry per page. A layer whose
  derivation raises, or whose numeric gradient or HVP check fails, is reported as a warning, so
  `mkdocs build --strict` fails loudly instead of skipping it; its page shows the error.
- on_files also adds the pictures (docs/figures.py): the loss curves rendered with matplotlib from
  the recorded runs in docs/data/*.json, and the optimizer trajectories, computed now with the
  optimizer kernels on a layer defined by its forward only. They exist only in the built site
  (figures/*.png); a missing data file or a failure is a warning, so --strict fails.
- on_page_markdown: in a hand-written page, `<!-- symgrad:cli-help -->` becomes `symgrad --help`;
  `<!-- symgrad:source symgrad.models.gpt:gpt_graph -->` the source of that function (so a page that
  explains code shows the code as it is); `<!-- symgrad:step gpt -->` the training step symgrad
  prints for a small GPT; `<!-- symgrad:run gpt -->` a table saying what the recorded run
  behind a loss curve was; `<!-- symgrad:derive cross_entropy --order 2 -->` what
  `symgrad derive cross_entropy --order 2` prints; `<!-- symgrad:newton -->` the Newton steps of
  docs/newton_step.py (models.newton on whole-model HVPs), run now.

Environment: SYMGRAD_DOCS_LAYERS=a,b restricts the generated layers (development only).
Generation runs once per process: restart `mkdocs serve` to see changes to derive/ (Python caches
the imported modules anyway); edits to the hand-written pages reload live.
"""

from __future__ import annotations

import logging
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def _paths():
    """docs/ on sys.path (for sitegen, fetch_assets; symgrad.derive and the rest come from the
    install). MkDocs restores sys.path after loading a hook, so this runs again before each
    import."""
    if str(DOCS) not in sys.path:
        sys.path.insert(0, str(DOCS))


_paths()
import fetch_assets  # noqa: E402  (docs/fetch_assets.py)
import figures  # noqa: E402  (docs/figures.py)
import newton_step  # noqa: E402  (docs/newton_step.py)
import sitegen  # noqa: E402  (docs/sitegen/)

log = logging.getLogger("mkdocs.hooks.symgrad")

_cache: dict = {}  # one generation per process (mkdocs serve rebuilds reuse it)
CLI_MARKER = "<!-- symgrad:cli-help -->"
SOURCE_MARKER = re.compile(r"<!-- symgrad:source ([\w.]+):([\w.]+) -->")
RUN_MARKER = re.compile(r"<!-- symgrad:run (\w+) -->")
STEP_MARKER = "<!-- symgrad:step gpt -->"
DERIVE_MARKER = re.compile(r"<!-- symgrad:derive (\w+)( --order 2)? -->")
NEWTON_MARKER = "<!-- symgrad:newton -->"


API = ROOT / "build" / "api"  # mkdocs.yml: mkdocstrings' `paths`


def _api_tree():
    tree = API / "symgrad"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for f in (ROOT / "symgrad").glob("*.py"):
        (tree / f.name).symlink_to(f)
    for package in ("derive", "compiled", "models"):
        (tree / package).symlink_to(ROOT / package, target_is_directory=True)


# Built when MkDocs loads this hook, before any plugin's on_config: mkdocstrings' python handler
# drops a `paths` entry that does not exist yet (a fresh clone has no build/).
_api_tree()


def on_pre_build(config):
    try:
        fetch_assets.ensure(log=log.info)
    except fetch_assets.AssetError as e:
        raise PluginError(f"symgrad docs: MathJax assets: {e}") from None


def _site():
    if "site" not in _cache:
        _paths()
        only = [n for n in os.environ.get("SYMGRAD_DOCS_LAYERS", "").split(",") if n.strip()]
        _cache["site"] = sitegen.generate(only or None)
        s = _cache["site"]
        log.info(f"symgrad: generated {len(s.pages)} pages ({len(s.layers)} layers) "
                 f"in {s.seconds:.1f} s")
    return _cache["site"]


def _figures():
    if "figures" not in _cache:
        _paths()
        t0 = time.perf_counter()
        _cache["figures"] = figures.render_all()
        log.info(f"symgrad: rendered {len(_cache['figures'][0])} figures in "
                 f"{time.perf_counter() - t0:.1f} s")
    return _cache["figures"]


def _expand_nav(nav, site):
    """Replace `Layers: layers/index.md` and `Optimizers: optimizers/index.md` with sections."""
    out = []
    for entry in nav or []:
        if isinstance(entry, dict) and len(entry) == 1:
            (title, target), = entry.items()
            if target == "layers/index.md":
                entry = {title: ["layers/index.md", *site.layer_nav]}
            elif target == "optimizers/index.md":
                entry = {title: ["optimizers/index.md", *site.optimizer_nav]}
            elif isinstance(target, list):
                entry = {title: _expand_nav(target, site)}
        out.append(entry)
    return out


def on_files(files, config):
    site = _site()
    for path, content in site.pages.items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            raise PluginError(f"symgrad docs: docs/{path} is generated; remove the hand-written file")
        files.append(File.generated(config, path, content=content))
    config["nav"] = _expand_nav(config["nav"], site)
    for w in site.warnings:
        log.warning(w)
    pngs, problems = _figures()
    for path, png in pngs.items():
        files.append(File.generated(config, path, content=png))
    for w in problems:
        log.warning(f"symgrad figures: {w}")
    return files


def _cli_help() -> str:
    cmd = [sys.executable, "-c", "import sys, symgrad.cli as c; sys.exit(c.main(['--help']))"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is not None and proc.returncode == 0 and proc.stdout.strip():
        return "```text\n$ symgrad --help\n" + proc.stdout.rstrip() + "\n```\n"
    why = "timed out" if proc is None else (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return ('!!! info "`symgrad --help` is not available in this build"\n\n'
            f"    The command line (`symgrad.cli`) could not print its help: `{why}`.\n")


def _source(module: str, qualname: str) -> str:
    """The source of `module:qualname` as a code block, or a warning (so --strict fails)."""
    _paths()
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        src = inspect.getsource(obj)
    except Exception as e:
        log.warning(f"symgrad: cannot show the source of {module}:{qualname}: {type(e).__name__}: {e}")
        return f"`{module}:{qualname}` (source unavailable)"
    indent = min(len(line) - len(line.lstrip()) for line in src.splitlines() if line.strip())
    src = "\n".join(line[indent:] for line in src.splitlines())
    try:  # docs/newton_step.py is imported as `newton_step`: name it by its path
        path = Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT).as_posix()
    except (TypeError, ValueError):
        path = module.replace(".", "/") + ".py"
    return f'```python title="{path}: {qualname}"\n{src}\n```'


def _printed_step() -> str:
    """The training step symgrad prints for a one-block GPT (block 8, 2 heads, width 16), as a
    collapsible code block, or a warning (so --strict fails)."""
    _paths()
    try:
        import numpy as np
        from symgrad.models.gpt import GPT, GPTConfig

        cfg = GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16)
        m = GPT(cfg, seed=0)
        ids = np.zeros((2, cfg.block_size), np.int64)
        m(ids, ids)
        src = Path(m.source_path).read_text()
    except Exception as e:
        log.warning(f"symgrad: cannot print the GPT's step: {type(e).__name__}: {e}")
        return "(the printed step is unavailable in this build)"
    body = "\n".join("    " + line if line else "" for line in src.splitlines())
    return f'??? example "The printed step of a one-block GPT (batch 2, block 8)"\n\n    ```python\n{body}\n    ```\n'


def _derive_output(name: str, order2: bool) -> str:
    """What `symgrad derive NAME [--order 2]` prints, as a console block, or a warning."""
    _paths()
    try:
        from symgrad import derive_cmd

        if order2:
            from symgrad.derive.second_order import second_order
            text = derive_cmd.render_text_order2(second_order(name))
        else:
            from symgrad import derive
            text = derive_cmd.render_text(derive.layer(name))
    except Exception as e:
        log.warning(f"symgrad: cannot show `symgrad derive {name}`: {type(e).__name__}: {e}")
        return f"(`symgrad derive {name}` is unavailable in this build)"
    flag = " --order 2" if order2 else ""
    return f"```console\n$ symgrad derive {name}{flag}\n{text}\n```"


def _newton() -> str:
    _paths()
    try:
        t0 = time.perf_counter()
        md = newton_step.report()
        log.debug(f"symgrad: Newton steps in {time.perf_counter() - t0:.1f} s")
        return md
    except Exception as e:
        log.warning(f"symgrad: cannot run the Newton steps of docs/newton_step.py: {type(e).__name__}: {e}")
        return "(the Newton steps are unavailable in this build)"


def on_page_markdown(markdown, page, config, files):
    if STEP_MARKER in markdown:
        if "step" not in _cache:
            _cache["step"] = _printed_step()
        markdown = markdown.replace(STEP_MARKER, _cache["step"])
    markdown = SOURCE_MARKER.sub(lambda m: _source(m.group(1), m.group(2)), markdown)
    markdown = RUN_MARKER.sub(lambda m: figures.run_summary(m.group(1)), markdown)
    markdown = DERIVE_MARKER.sub(lambda m: _derive_output(m.group(1), bool(m.group(2))), markdown)
    if NEWTON_MARKER in markdown:
        if "newton" not in _cache:
            _cache["newton"] = _newton()
        markdown = markdown.replace(NEWTON_MARKER, _cache["newton"])
    if CLI_MARKER in markdown:
        if "cli" not in _cache:
            t0 = time.perf_counter()
            _cache["cli"] = _cli_help()
            log.debug(f"symgrad: CLI help in {time.perf_counter() - t0:.1f} s")
        markdown = markdown.replace(CLI_MARKER, _cache["cli"])
    return markdown
