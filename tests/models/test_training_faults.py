"""Issue #11, item 7: training neither loses work nor keeps bad state. An unusable --out is
refused before training, a resume writes back to the file it resumed from, a non-finite state is
never checkpointed (the last finite checkpoint stays), and bad checkpoints give one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from symgrad.models import checkpoint
from symgrad.train_cmd import sample_main, train_main

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "8", "--block-size", "8", "--batch-size", "2",
        "--no-progress", "--sample-tokens", "0"]
RESUME = ["--no-progress", "--sample-tokens", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 4-step run, checkpointed at steps 2 and 4."""
    out = tmp_path_factory.mktemp("run") / "r"
    assert train_main(["gpt", "--steps", "4", "--eval-interval", "2", "--out", str(out), *TINY]) == 0
    return out / "ckpt.npz"


def one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    return err


def rewrite(src, dst, edit):
    """Copy checkpoint `src` to `dst` raw (bypassing checkpoint.save's checks), after
    `edit(arrays, meta)` changed it in place."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    edit(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


def test_out_naming_a_regular_file_is_refused_before_training(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a folder")
    for out in (f, f / "sub"):
        err = one_line_error(capsys, train_main(["gpt", "--steps", "2", "--out", str(out), *TINY]))
        assert "is a file, not a folder" in err
    assert f.read_text() == "not a folder"


def test_resume_from_a_checkpoint_not_named_ckpt_npz_writes_back_to_it(capsys, tmp_path, run):
    mine, other = tmp_path / "mine.npz", tmp_path / "ckpt.npz"
    mine.write_bytes(run.read_bytes())
    other.write_bytes(b"another run's checkpoint")
    assert train_main(["gpt", "--resume", str(mine), "--steps", "6", *RESUME]) == 0
    assert other.read_bytes() == b"another run's checkpoint"
    assert checkpoint.load(mine)["meta"]["step"] == 6
    capsys.readouterr()
    err = one_line_error(capsys, train_main(["gpt", "--resume", str(mine), "--steps", "8",
                                             "--out", str(tmp_path / "elsewhere"), *RESUME]))
    assert "writes back to" in err and checkpoint.load(mine)["meta"]["step"] == 6


def test_diverged_state_is_never_checkpointed_and_the_last_finite_one_is_kept(capsys, tmp_path,
                                                                             monkeypatch):
    from symgrad.models.tasks import GPTTask

    real = GPTTask.train_step
    calls = []

    def step_with_an_inf_gradient_at_step_4(self):
        loss = real(self)
        calls.append(loss)
        if len(calls) == 4:  # a finite loss, an inf gradient: Adam's moments and then W go NaN
            self.model.parameters()[0].grad[...] = np.inf
        return loss

    monkeypatch.setattr(GPTTask, "train_step", step_with_an_inf_gradient_at_step_4)
    out = tmp_path / "r"
    rc = train_main(["gpt", "--steps", "6", "--eval-interval", "2", "--out", str(out), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "Traceback" not in err, err
    assert f"last good checkpoint (step 2) is kept at {out / 'ckpt.npz'}" in err
    ck = checkpoint.load(out)  # load refuses non-finite checkpoints, so this one is finite
    assert ck["meta"]["step"] == 2


def test_checkpoints_with_nan_parameters_or_moments_are_neither_written_nor_read(tmp_path, run):
    ck = checkpoint.load(run)
    before = run.read_bytes()
    moments = {"t": ck["opt_state"]["t"],
               "state": {s: [np.full_like(b, np.nan) for b in bufs]
                         for s, bufs in ck["opt_state"]["state"].items()}}
    with pytest.raises(checkpoint.CheckpointError, match="NaN or inf"):
        checkpoint.save(run, ck["meta"], ck["params"], moments)
    params = dict(ck["params"], **{"wte.table": ck["params"]["wte.table"] * np.nan})
    with pytest.raises(checkpoint.CheckpointError, match="NaN or inf"):
        checkpoint.save(run, ck["meta"], params, ck["opt_state"])
    assert run.read_bytes() == before and not list(run.parent.glob(".*tmp*"))

    def nan_moment(arrays, meta):
        key = next(k for k in arrays if k.startswith("opt/"))
        arrays[key] = arrays[key] * np.nan

    with pytest.raises(checkpoint.CheckpointError, match="diverged run"):
        checkpoint.load(rewrite(run, tmp_path / "m.npz", nan_moment))


def test_sample_on_a_nonfinite_checkpoint_is_one_line(capsys, tmp_path, run):
    def nan_params(arrays, meta):
        arrays["param/wte.table"] = arrays["param/wte.table"] * np.nan

    nan = rewrite(run, tmp_path / "nan.npz", nan_params)
    assert "NaN or inf" in one_line_error(capsys, sample_main([str(nan)]))
    # finite parameters whose logits are not (a run that diverged without a NaN in W)
    ck = checkpoint.load(run)
    ck["params"]["wte.table"][:] = np.float32(3e38)
    checkpoint.save(tmp_path / "huge.npz", ck["meta"], ck["params"], ck["opt_state"])
    err = one_line_error(capsys, sample_main([str(tmp_path / "huge.npz"), "--tokens", "3"]))
    assert "not finite" in err


def test_corpus_of_one_repeated_character_trains_and_samples(capsys, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("a" * 400)  # no newline: the usual "\n" prompt is not in the vocabulary
    out = tmp_path / "r"
    argv = ["gpt", "--text", str(text), "--steps", "2", "--out", str(out), *TINY]
    argv[argv.index("--sample-tokens") + 1] = "5"
    assert train_main(argv) == 0
    assert "--- sample ---\naaaaa\n" in capsys.readouterr().out
    assert sample_main([str(out), "--tokens", "3"]) == 0
    assert capsys.readouterr().out == "aaaa\n"  # the prompt "a", then three more


def test_eval_interval_is_restored_on_resume(tmp_path):
    part = tmp_path / "r"
    assert train_main(["gpt", "--steps", "4", "--eval-interval", "2", "--out", str(part), *TINY]) == 0
    assert train_main(["gpt", "--resume", str(part), "--steps", "8", *RESUME]) == 0
    val = checkpoint.load(part)["meta"]["val_history"]
    assert [s for s, _ in val] == [2, 4, 6, 8]


def test_resuming_nan_parameters_or_a_meta_without_config_is_one_line(capsys, tmp_path, run):
    def nan_params(arrays, meta):
        arrays["param/lm_head.W"] = arrays["param/lm_head.W"] * np.nan

    def no_config(arrays, meta):
        del meta["config"]

    def no_vocab(arrays, meta):
        del meta["config"]["vocab"]

    for edit, needle in ((nan_params, "NaN or inf"), (no_config, "no config"),
                         (no_vocab, "'vocab'")):
        bad = rewrite(run, tmp_path / f"{edit.__name__}.npz", edit)
        err = one_line_error(capsys, train_main(["gpt", "--resume", str(bad), "--steps", "6", *RESUME]))
        assert needle in err and str(bad) in err, err
        assert "ckpt.npz" not in err  # no file that does not exist is named
        assert needle in one_line_error(capsys, sample_main([str(bad)]))
