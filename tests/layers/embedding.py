"""embedding: rows[n, :] = table[ids[n], :]; its gradient is a scatter-add over repeated ids."""

from __future__ import annotations

import numpy as np

from tests.layers._shared import normal, one_hot


def cases(rng):
    return [("ids with repeats", {"ids": np.array([0, 2, 2, 1, 0]), "table": normal(rng, 4, 3)}),
            ("batch1", {"ids": np.array([1]), "table": normal(rng, 2, 1)})]


def forward(t):
    return {"rows": t["table"][t["ids"]]}


def embedding_dtable(g, ids, table):
    return one_hot(ids, table.shape[0]).T @ g  # the scatter-add as a one-hot matrix product


def embedding_dtable_fancy_add(g, ids, table):
    out = np.zeros_like(table)
    out[ids] += g  # mistake: buffered fancy indexing drops repeated ids
    return out


def embedding_dtable_mean(g, ids, table):
    out = np.zeros_like(table)
    np.add.at(out, ids, g)
    counts = np.bincount(ids, minlength=table.shape[0])[:, None]
    return out / np.maximum(counts, 1)  # mistake: averages the rows of one id


RIGHT = [("table", embedding_dtable, "one-hot^T @ g")]
WRONG = [("table", embedding_dtable_fancy_add, "repeated ids lost by fancy +="),
         ("table", embedding_dtable_mean, "averaged instead of summed")]
