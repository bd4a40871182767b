"""Recurrent cells: one time step each; models/ unrolls them for backpropagation through time."""

from sympy import tanh

from ..registry import layer


@layer
def rnn_cell(G):
    """Elman cell: h[n,u] = tanh(sum_k x[n,k] Wxh[k,u] + sum_k h_prev[n,k] Whh[k,u] + bh[u])."""
    N, I, H = G.dims("N I H")
    x = G.input("x", (N, I))
    h_prev = G.input("h_prev", (N, H))
    Wxh = G.param("Wxh", (I, H))
    Whh = G.param("Whh", (H, H))
    bh = G.param("bh", (H,))
    n, u, k, r = G.indices(n=N, u=H, k=I, r=H)
    a = G.bind("a", (n, u), G.sum(x[n, k] * Wxh[k, u], k) + G.sum(h_prev[n, r] * Whh[r, u], r) + bh[u])
    G.output(G.bind("h", (n, u), tanh(a[n, u])))


@layer
def lstm_cell(G):
    """LSTM cell. z = [x, h_prev] W + b with W (I+H, 4H), viewed as (I+H, 4, H): gate rows
    0..3 are input i, forget f, output o and candidate c~. c = f c_prev + i c~, h = o tanh(c)."""
    N, I, H = G.dims("N I H")
    x = G.input("x", (N, I))
    h_prev = G.input("h_prev", (N, H))
    c_prev = G.input("c_prev", (N, H))
    W = G.param("W", (I + H, 4, H))
    b = G.param("b", (4, H))
    n, u, k, r, q = G.indices(n=N, u=H, k=I, r=H, q=4)

    def gate(name, row):
        """A sigmoid gate, written (1 + t)/2 with t = tanh(z/2): no exp to overflow, and its VJP
        reads the saved gate (t = 2 gate - 1 is a polynomial, so nothing is divided)."""
        t = G.bind(f"t_{name}", (n, u), tanh(z[n, row, u] / 2))
        return G.bind(name, (n, u), (1 + t[n, u]) / 2, save=True)

    z = G.bind("z", (n, q, u), G.sum(x[n, k] * W[k, q, u], k) + G.sum(h_prev[n, r] * W[I + r, q, u], r)
               + b[q, u])
    ig, fg, og = gate("ig", 0), gate("fg", 1), gate("og", 2)
    cand = G.bind("cand", (n, u), tanh(z[n, 3, u]), save=True)
    c = G.bind("c", (n, u), fg[n, u] * c_prev[n, u] + ig[n, u] * cand[n, u])
    tc = G.bind("tc", (n, u), tanh(c[n, u]), save=True)
    h = G.bind("h", (n, u), og[n, u] * tc[n, u])
    G.output(h, c)
