"""`symgrad verify FILE.py:FUNCTION --layer NAME --wrt ARG [--json]`: exit 0 right, 1 wrong,
2 bad input; one-line errors, no tracebacks, clean stdout for --json."""

from __future__ import annotations

import json
import textwrap

import pytest

from symgrad.verify_cmd import main
from tests.verify_cli import candidates_file, run_cli

CANDIDATES = textwrap.dedent('''
    import numpy as np

    print("chatter from the user's module")

    def _softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def right(g, x):
        s = _softmax(x)
        J = s[:, :, None] * (np.eye(x.shape[1])[None] - s[:, None, :])
        return np.einsum("nj,njk->nk", g, J)

    def wrong(g, x):
        return g * _softmax(x)

    def raises(g, x):
        raise RuntimeError("boom")

    def bad_shape(g, x):
        return g[:, :1]

    def bad_signature(dy, x):
        return dy

    sympy_right = "s[i, j]*(g[i, j] - Sum(g[i, k]*s[i, k], (k, 0, n - 1)))"
    sympy_wrong = "s[i, j]*g[i, j]"
''')


@pytest.fixture
def cand(tmp_path):
    return candidates_file(tmp_path, CANDIDATES, "cand.py")


def run(capsys, *argv):
    return run_cli(capsys, main, *argv)


def test_right_candidate_exits_0_and_prints_the_report(cand, capsys):
    code, out, err = run(capsys, f"{cand}:right", "--layer", "softmax", "--wrt", "x")
    assert code == 0 and "MATCHES" in out
    assert "chatter" in err and "chatter" not in out  # the user's prints go to stderr


def test_wrong_candidate_exits_1_with_a_counterexample(cand, capsys):
    code, out, err = run(capsys, f"{cand}:wrong", "--layer", "softmax", "--wrt", "x")
    assert code == 1 and "WRONG" in out and "counterexample" in out


def test_sympy_candidates_from_a_file(cand, capsys):
    assert run(capsys, f"{cand}:sympy_right", "--layer", "softmax", "--wrt", "x")[0] == 0
    code, out, _ = run(capsys, f"{cand}:sympy_wrong", "--layer", "softmax", "--wrt", "x")
    assert code == 1 and "derived - candidate = -s[i, j]*sum_k" in out


def test_json_output_is_machine_readable(cand, capsys):
    code, out, _ = run(capsys, f"{cand}:wrong", "--layer", "softmax", "--wrt", "x", "--json")
    data = json.loads(out)
    assert code == 1 and data["verdict"] == "wrong" and data["ok"] is False
    assert data["errors"]["x"]["max_abs_error"] > 0 and data["counterexample"]["index"]
    code, out, _ = run(capsys, f"{cand}:right", "--layer", "softmax", "--wrt", "x", "--json")
    assert code == 0 and json.loads(out)["verdict"] == "matches"


@pytest.mark.parametrize("spec, extra, needle", [
    ("{c}:raises", [], "raised RuntimeError: boom"),
    ("{c}:bad_shape", [], "returned shape"),
    ("{c}:bad_signature", [], "wrong signature"),
    ("{c}:nosuch", [], "has no candidate 'nosuch' (it defines:"),
    ("/nonexistent/cand.py:f", [], "no such file"),
    ("{c}", [], "FILE.py:NAME"),
    ("{c}:right", ["--layer", "nosuch"], "unknown layer"),
    ("{c}:right", ["--wrt", "W"], "has no argument 'W'"),
    ("{c}:right", ["--dtype", "float32"], "float64"),
])
def test_bad_input_exits_2_with_one_line(cand, capsys, spec, extra, needle):
    argv = [spec.format(c=cand), "--layer", "softmax", "--wrt", "x"]
    if extra:
        if extra[0] in argv:
            argv[argv.index(extra[0]) + 1] = extra[1]
        else:
            argv += extra
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert needle in err, err
    ours = [ln for ln in err.splitlines() if "chatter" not in ln]
    assert out == "" and len(ours) == 1  # just the one line
    assert len(err.strip().splitlines()[-1]) > 0 and err.strip().splitlines()[-1].startswith("symgrad verify:")


def test_missing_required_option_and_import_error_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, "x.py:f")
    assert code == 2 and err.count("\n") == 1 and "--layer" in err
    bad = tmp_path / "bad.py"
    bad.write_text("def f(g, x):\n    return g +\n")
    code, _, err = run(capsys, f"{bad}:f", "--layer", "softmax", "--wrt", "x")
    assert code == 2 and "SyntaxError" in err and err.count("\n") == 1
    boom = tmp_path / "boom.py"
    boom.write_text("raise SystemExit(5)\n")
    code, _, err = run(capsys, f"{boom}:f", "--layer", "softmax", "--wrt", "x")
    assert code == 2 and "SystemExit" in err


def test_layer_defined_in_a_file(tmp_path, capsys):
    f = tmp_path / "swish.py"
    f.write_text(textwrap.dedent('''
        import numpy as np
        from sympy import exp

        def swish(G):
            N, C = G.dims("N C")
            x = G.input("x", (N, C))
            i, j = G.indices(i=N, j=C)
            G.output(G.bind("y", (i, j), x[i, j] / (1 + exp(-x[i, j]))))

        def dx(g, x):
            s = 0.5 * (1 + np.tanh(x / 2))
            return g * (s + x * s * (1 - s))
    '''))
    code, out, err = run(capsys, f"{f}:dx", "--layer", f"{f}:swish", "--wrt", "x")
    assert code == 0, out + err


def test_dispatch_through_the_symgrad_command(cand, capsys):
    from symgrad.cli import main as cli_main

    code = cli_main(["verify", f"{cand}:wrong", "--layer", "softmax", "--wrt", "x"])
    out, err = capsys.readouterr()
    assert code == 1 and "WRONG" in out
