"""Table lookup: rows of a table selected by integer ids."""

from ..registry import layer


@layer
def embedding(G):
    """rows[n,c] = table[ids[n], c]; the gradient scatter-adds g's rows into the table."""
    N, V, C = G.dims("N V C")
    ids = G.input("ids", (N,), integer=True)
    table = G.param("table", (V, C))
    n, c = G.indices(n=N, c=C)
    rows = G.bind("rows", (n, c), table[ids[n], c])
    G.output(rows)
