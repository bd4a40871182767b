"""`symgrad train` / `symgrad sample`: bad input gives one line and exit 2, nothing overwritten;
resume continues the same loss curve; the MLP learns the spirals."""

import numpy as np
import pytest

from symgrad.models import checkpoint
from symgrad.train_cmd import sample_main, train_main

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "8", "--block-size", "8", "--batch-size", "2",
        "--no-progress", "--sample-tokens", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert train_main(["gpt", "--steps", "4", "--eval-interval", "2", "--out", str(out), *TINY]) == 0
    return out


def one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, msg", [
    (["gpx"], "unknown model 'gpx'"),
    (["gpt", "--optimizer", "adamx"], "unknown optimizer 'adamx'"),
    (["gpt", "--lr", "-0.1"], "learning rate"),
    (["gpt", "--lr", "nan"], "learning rate"),
    (["gpt", "--resume", "/nonexistent/ckpt.npz"], "checkpoint not found"),
])
def test_bad_train_input_is_one_line_and_exit_2(capsys, argv, msg):
    assert msg in one_line_error(capsys, train_main(argv))


def test_empty_and_short_text_are_refused(capsys, tmp_path):
    empty, short = tmp_path / "e.txt", tmp_path / "s.txt"
    empty.write_text("")
    short.write_text("to be or not")
    assert "empty" in one_line_error(capsys, train_main(["gpt", "--text", str(empty), "--out", str(tmp_path / "o")]))
    assert "too short" in one_line_error(capsys, train_main(["gpt", "--text", str(short), "--out", str(tmp_path / "o")]))
    assert not (tmp_path / "o").exists()


def test_corrupt_checkpoint_and_other_config_are_refused_and_kept(capsys, tmp_path, run):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert "corrupt checkpoint" in one_line_error(capsys, sample_main([str(bad)]))
    assert "corrupt checkpoint" in one_line_error(capsys, train_main(["gpt", "--resume", str(bad)]))
    assert bad.read_bytes() == b"not a zip"
    before = (run / "ckpt.npz").read_bytes()
    assert "another config" in one_line_error(capsys, train_main(["gpt", "--resume", str(run), "--n-embd", "16"]))
    assert "exists" in one_line_error(capsys, train_main(["gpt", "--out", str(run), *TINY]))
    assert (run / "ckpt.npz").read_bytes() == before


def test_resume_continues_the_same_loss_curve(tmp_path, run):
    full = tmp_path / "full"
    assert train_main(["gpt", "--steps", "6", "--eval-interval", "2", "--out", str(full), *TINY]) == 0
    part = tmp_path / "part"
    (part).mkdir()
    (part / "ckpt.npz").write_bytes((run / "ckpt.npz").read_bytes())  # the 4-step run
    assert train_main(["gpt", "--resume", str(part), "--steps", "6", "--no-progress", "--sample-tokens", "0"]) == 0
    a = checkpoint.load(full)["meta"]["history"]
    b = checkpoint.load(part)["meta"]["history"]
    np.testing.assert_allclose(np.array(b)[:, 1], np.array(a)[:, 1], rtol=1e-6)


def test_sample_is_deterministic(capsys, run):
    assert sample_main([str(run), "--tokens", "20", "--seed", "3", "--top-k", "5"]) == 0
    a = capsys.readouterr().out
    assert sample_main([str(run), "--tokens", "20", "--seed", "3", "--top-k", "5"]) == 0
    assert capsys.readouterr().out == a and len(a) > 20


def test_mlp_reaches_95_percent_on_spirals():
    from symgrad.models.mlp import train_mlp
    _, acc, losses = train_mlp(steps=300, lr=0.02, seed=0, log=lambda *a: None)
    assert acc >= 0.95 and losses[-1] < losses[0]
