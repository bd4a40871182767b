"""Shared by the verify command's tests: a file of candidates, and one call of the command."""

from __future__ import annotations


def candidates_file(tmp_path, text: str, name: str = "cand.py") -> str:
    """`text` written to tmp_path/name; its path, for FILE.py:FUNCTION arguments."""
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def run_cli(capsys, main, *argv):
    """(exit code, stdout, stderr) of main(argv); no traceback may reach the user."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err
