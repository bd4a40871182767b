"""The install's import names: derive/, compiled/ and models/ install as symgrad.derive,
symgrad.compiled and symgrad.models, so a user's project with its own `models.py`, `derive.py`
or `compiled/` package neither breaks symgrad nor is broken by it."""

import subprocess
import sys
import textwrap


def test_a_project_with_its_own_models_derive_and_compiled_still_runs_symgrad(tmp_path):
    for name in ("models.py", "derive.py"):
        (tmp_path / name).write_text(f"raise ImportError('the user project\\'s own {name} was imported')\n")
    (tmp_path / "compiled").mkdir()
    (tmp_path / "compiled" / "__init__.py").write_text("MINE = True\n")
    script = textwrap.dedent("""
        from symgrad import derive, compiled, models
        from symgrad.models.gpt import GPTConfig
        assert derive.layer("softmax").name == "softmax"
        assert models.__name__ == "symgrad.models" and GPTConfig().n_layer > 0
        import importlib
        assert importlib.import_module("compiled").MINE  # the project's own package is its own
        print("ok")
    """)
    # run from the project's folder, which Python puts first on sys.path
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_no_source_file_imports_the_bare_folder_names():
    """From the repository root `import models` would still find the folder, so a bare import
    would pass the suite here and fail in a user's project: none may exist."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    bare = re.compile(r"^\s*(?:>>> )?(?:from (?:derive|compiled|models)\b|import (?:[\w.]+,\s*)*(?:derive|compiled|models)\b)", re.M)
    offenders = [f"{p.relative_to(root)}:{s[:m.start()].count(chr(10)) + 1}"
                 for top in ("derive", "compiled", "models", "symgrad", "docs", "tests")
                 for p in sorted((root / top).rglob("*.py")) + sorted((root / top).rglob("*.md"))
                 for s in [p.read_text()] for m in bare.finditer(s)]
    assert not offenders, f"import these as symgrad.derive / symgrad.compiled / symgrad.models: {offenders}"
