"""Word2Vec skip-gram with negative sampling: its loss (a layer defined by its forward expression
only, in models/word2vec.py) falls under training, and `symgrad train word2vec` prints neighbours."""

import numpy as np

from symgrad.train_cmd import train_main


def test_sgns_loss_falls_and_neighbours_are_printed(capsys):
    assert train_main(["word2vec", "--steps", "200"]) == 0
    out = capsys.readouterr().out
    start, end = (float(v) for v in out.split("loss ")[-1].split(";")[0].split(" -> "))
    assert end < start - 0.5, out  # from 6 log 2 = 4.16 at the start
    lines = [ln for ln in out.splitlines() if " -> " in ln and ln.startswith("  ")]
    words = {ln.split("->")[0].strip(): ln.split("->")[1].split(", ") for ln in lines}
    assert {"king", "thou", "lord"} <= set(words) and all(len(ns) == 5 for ns in words.values()), out


def test_subsampling_keeps_rare_words_and_thins_frequent_ones():
    from symgrad.models.word2vec import subsample
    ids = np.array([0] * 900 + [1] * 100)
    freq = np.array([900.0, 100.0])
    kept = subsample(ids, freq, 0.1, np.random.default_rng(0))  # word 0 kept w.p. 0.44
    assert (kept == 1).sum() == 100 and 300 < (kept == 0).sum() < 600
