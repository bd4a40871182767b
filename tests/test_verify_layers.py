"""Hand-derived gradients of every built-in layer are accepted by `derive.verify`; plausible
mistakes are rejected with a counterexample.

The gradients are derived by hand, as NumPy functions, from the math alone.

Written independently of derive/ (that is the point): each is in a different form from the
engine's (explicit Jacobians, the expanded textbook layernorm, matrix calculus with einsum), and
each layer also has plausible mistakes a person makes when deriving by hand. `RIGHT[layer]` and
`WRONG[layer]` are lists of (wrt, function, what it is).

A candidate receives the upstream gradient `g` (or `g_h`, `g_c` for the LSTM's two outputs) and
the layer's arguments by name.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf, erfc

SQRT2PI = np.sqrt(2 * np.pi)


# --- small forward helpers (the math, in NumPy) ------------------------------------------------

def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def logistic(x):
    return 0.5 * (1 + np.tanh(x / 2))  # = 1/(1+exp(-x)), without overflow


def one_hot(ids, n):
    out = np.zeros((len(ids), n))
    out[np.arange(len(ids)), ids] = 1.0
    return out


# --- linear: y = x W + b ------------------------------------------------------------------------

def linear_dx(g, W):
    return np.einsum("nj,kj->nk", g, W)


def linear_dW(g, x):
    return sum(np.outer(x[n], g[n]) for n in range(x.shape[0]))  # one outer product per sample


def linear_db(g):
    return np.ones(g.shape[0]) @ g


def linear_db_mean(g):
    return g.mean(axis=0)  # mistake: averages over the batch (a spurious 1/N)


def linear_dW_outer_of_sums(g, x):
    return np.outer(x.sum(0), g.sum(0))  # mistake: sums the batch before the outer product


def linear_dx_sign(g, W):
    return -g @ W.T  # mistake: sign error


# --- activations ------------------------------------------------------------------------------

def relu_dx(g, x):
    return np.where(x > 0, g, 0.0)


def relu_dx_no_mask(g, x):
    return g.copy()  # mistake: forgot the mask


def relu_dx_relu_of_g(g, x):
    return np.maximum(g, 0.0)  # mistake: applied relu to the gradient instead of masking by x


def tanh_dx(g, x):
    return g / np.cosh(x) ** 2  # sech^2, not 1 - y^2


def tanh_dx_no_square(g, x):
    return g * (1 - np.tanh(x))  # mistake: forgot the square


def tanh_dx_sign(g, x):
    return g * (1 + np.tanh(x) ** 2)  # mistake: sign error


def sigmoid_dx(g, x):
    return g * logistic(x) * logistic(-x)  # s(x) (1 - s(x)) = s(x) s(-x)


def sigmoid_dx_no_complement(g, x):
    return g * logistic(x)  # mistake: forgot the (1 - s) factor


def sigmoid_dx_sign(g, x):
    s = logistic(x)
    return g * s * (1 + s)  # mistake: sign error


_C = np.sqrt(2 / np.pi)


def gelu_dx(g, x):
    u = _C * (x + 0.044715 * x ** 3)
    t = np.tanh(u)
    return g * (0.5 * (1 + t) + 0.5 * x / np.cosh(u) ** 2 * _C * (1 + 3 * 0.044715 * x ** 2))


def gelu_dx_no_product_rule(g, x):
    return g * 0.5 * (1 + np.tanh(_C * (x + 0.044715 * x ** 3)))  # mistake: dropped x * dt/dx


def gelu_dx_inner_chain(g, x):
    u = _C * (x + 0.044715 * x ** 3)
    # mistake: d/dx (x + a x^3) written as 1 + a x^2 (the 3 is lost)
    return g * (0.5 * (1 + np.tanh(u)) + 0.5 * x / np.cosh(u) ** 2 * _C * (1 + 0.044715 * x ** 2))


def gelu_erf_dx(g, x):
    return g * (0.5 * erfc(-x / np.sqrt(2)) + x * np.exp(-x * x / 2) / SQRT2PI)  # Phi + x phi


def gelu_erf_dx_no_x_phi(g, x):
    return g * 0.5 * (1 + erf(x / np.sqrt(2)))  # mistake: dropped the x * phi(x) term


def gelu_erf_dx_unnormalized_phi(g, x):
    return g * (0.5 * (1 + erf(x / np.sqrt(2))) + x * np.exp(-x * x / 2))  # mistake: phi without 1/sqrt(2 pi)


# --- softmax family ---------------------------------------------------------------------------

def softmax_dx_jacobian(g, x):
    s = softmax(x)
    J = s[:, :, None] * (np.eye(x.shape[1])[None] - s[:, None, :])  # J[n, j, k] = ds_j/dx_k
    return np.einsum("nj,njk->nk", g, J)


def softmax_dx_no_cross_term(g, x):
    return g * softmax(x)  # mistake: only the diagonal of the Jacobian


def softmax_dx_unweighted_sum(g, x):
    s = softmax(x)
    return s * (g - g.sum(-1, keepdims=True))  # mistake: sum(g) instead of sum(g * s)


def log_softmax_dx_jacobian(g, x):
    s = softmax(x)
    J = np.eye(x.shape[1])[None] - s[:, None, :]  # dy_j/dx_k = delta_jk - s_k
    return np.einsum("nj,njk->nk", g, J)


def log_softmax_dx_elementwise(g, x):
    return g - softmax(x) * g  # mistake: g * s instead of s * sum(g)


def log_softmax_dx_no_sum(g, x):
    return g - softmax(x)  # mistake: assumed sum(g) = 1


def cross_entropy_dlogits(g, logits, targets):
    N, V = logits.shape
    return g * (softmax(logits) - one_hot(targets, V)) / N


def cross_entropy_no_mean(g, logits, targets):
    return g * (softmax(logits) - one_hot(targets, logits.shape[1]))  # mistake: missing 1/N


def cross_entropy_sign(g, logits, targets):
    return g * (one_hot(targets, logits.shape[1]) - softmax(logits)) / logits.shape[0]  # sign error


def cross_entropy_ignores_g(g, logits, targets):
    return (softmax(logits) - one_hot(targets, logits.shape[1])) / logits.shape[0]  # mistake: g = 1


# --- mse: 1/(N C) sum (pred - target)^2 -----------------------------------------------------------

def mse_dpred(g, pred, target):
    return 2 * g * (pred - target) / pred.size


def mse_dtarget(g, pred, target):
    return 2 * g * (target - pred) / target.size


def mse_dpred_no_mean(g, pred, target):
    return 2 * g * (pred - target)  # mistake: missing 1/(N C)


def mse_dpred_per_row(g, pred, target):
    return 2 * g * (pred - target) / pred.shape[0]  # mistake: 1/N instead of 1/(N C)


def mse_dtarget_sign(g, pred, target):
    return 2 * g * (pred - target) / pred.size  # mistake: sign of the target's gradient


# --- layernorm, the expanded textbook form (dvar, dmean) ----------------------------------------

def _ln_parts(x, eps):
    C = x.shape[1]
    mu = x.sum(1, keepdims=True) / C
    xmu = x - mu
    var = (xmu ** 2).sum(1, keepdims=True) / C
    return C, mu, xmu, var


def layernorm_dx(g, x, gamma, eps):
    C, mu, xmu, var = _ln_parts(x, eps)
    std = np.sqrt(var + eps)
    dxhat = g * gamma
    dvar = np.sum(dxhat * xmu * -0.5 * (var + eps) ** -1.5, axis=1, keepdims=True)
    dmu = np.sum(-dxhat / std, axis=1, keepdims=True) + dvar * np.mean(-2 * xmu, axis=1, keepdims=True)
    return dxhat / std + dvar * 2 * xmu / C + dmu / C


def layernorm_dgamma(g, x, eps):
    C, mu, xmu, var = _ln_parts(x, eps)
    return np.sum(g * xmu / np.sqrt(var + eps), axis=0)


def layernorm_dbeta(g):
    return g.sum(axis=0)


def layernorm_dx_no_var_path(g, x, gamma, eps):
    C, mu, xmu, var = _ln_parts(x, eps)
    dxhat = g * gamma
    return (dxhat - dxhat.mean(1, keepdims=True)) / np.sqrt(var + eps)  # mistake: dropped d var/dx


def layernorm_dx_sums_not_means(g, x, gamma, eps):
    C, mu, xmu, var = _ln_parts(x, eps)
    rstd = 1 / np.sqrt(var + eps)
    xhat, dxhat = xmu * rstd, g * gamma
    # mistake: the 1/C of the means is missing
    return rstd * (dxhat - dxhat.sum(1, keepdims=True) - xhat * (dxhat * xhat).sum(1, keepdims=True))


def layernorm_dx_no_eps(g, x, gamma, eps):
    return layernorm_dx(g, x, gamma, 0.0)  # mistake: eps left out of rstd in the backward


def layernorm_dgamma_no_xhat(g, x, eps):
    return g.sum(axis=0)  # mistake: forgot the normalized input


# --- embedding ----------------------------------------------------------------------------------

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


# --- residual -----------------------------------------------------------------------------------

def residual_da(g, a):
    return np.ones_like(a) * g


def residual_db(g, b):
    return g + np.zeros_like(b)


def residual_half(g):
    return 0.5 * g  # mistake: splits the gradient between the branches


def residual_double(g):
    return 2 * g  # mistake: counts the skip path twice


# --- attention (causal, scaled) -----------------------------------------------------------------

def _attention_forward(q, k, v, causal=True, scale=True):
    B, T, D = q.shape
    S = q @ k.transpose(0, 2, 1)
    if scale:
        S = S / np.sqrt(D)
    if causal:
        S = np.where(np.tril(np.ones((T, T), bool)), S, -np.inf)
    P = softmax(S)
    return P


def _attention_backward(g, q, k, v, causal=True, scale_fwd=True, scale_bwd=True, transpose_dk=True):
    D = q.shape[-1]
    P = _attention_forward(q, k, v, causal, scale_fwd)
    dv = P.transpose(0, 2, 1) @ g
    dP = g @ v.transpose(0, 2, 1)
    dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))
    c = 1 / np.sqrt(D) if scale_bwd else 1.0
    dq = dS @ k * c
    dk = (dS.transpose(0, 2, 1) if transpose_dk else dS) @ q * c
    return dq, dk, dv


def attention_dq(g, q, k, v):
    return _attention_backward(g, q, k, v)[0]


def attention_dk(g, q, k, v):
    return _attention_backward(g, q, k, v)[1]


def attention_dv(g, q, k, v):
    return _attention_backward(g, q, k, v)[2]


def attention_dq_no_scale(g, q, k, v):
    return _attention_backward(g, q, k, v, scale_bwd=False)[0]  # mistake: 1/sqrt(D) left out


def attention_dv_no_mask(g, q, k, v):
    return _attention_backward(g, q, k, v, causal=False)[2]  # mistake: causal mask ignored


def attention_dk_no_transpose(g, q, k, v):
    return _attention_backward(g, q, k, v, transpose_dk=False)[1]  # mistake: dS instead of dS^T


# --- multi-head attention -----------------------------------------------------------------------

def _mha(g, x, Wq, Wk, Wv, bq, bk, bv, Wo, bo, mistake=None):
    q = np.einsum("bia,ahc->bhic", x, Wq) + bq[None, :, None, :]
    k = np.einsum("bia,ahc->bhic", x, Wk) + bk[None, :, None, :]
    v = np.einsum("bia,ahc->bhic", x, Wv) + bv[None, :, None, :]
    B, H, T, D = q.shape
    flat = lambda a: a.reshape(B * H, T, D)  # noqa: E731
    P = _attention_forward(flat(q), flat(k), flat(v))
    att = (P @ flat(v)).reshape(B, H, T, D)
    datt = np.einsum("bif,hcf->bhic", g, Wo)
    dq, dk, dv = (a.reshape(B, H, T, D) for a in _attention_backward(
        flat(datt), flat(q), flat(k), flat(v), scale_bwd=mistake != "no_scale"))
    out = {"Wo": np.einsum("bhic,bif->hcf", att, g), "bo": g.sum((0, 1))}
    for n, d, W in (("q", dq, Wq), ("k", dk, Wk), ("v", dv, Wv)):
        out["W" + n] = np.einsum("bia,bhic->ahc", x, d)
        out["b" + n] = d.sum((0, 2))
    paths = [("q", dq, Wq)] if mistake == "q_path_only" else [("q", dq, Wq), ("k", dk, Wk), ("v", dv, Wv)]
    out["x"] = sum(np.einsum("bhic,ahc->bia", d, W) for _, d, W in paths)
    return out


def _mha_grad(name, mistake=None):
    def grad(g, x, Wq, Wk, Wv, bq, bk, bv, Wo, bo):
        return _mha(g, x, Wq, Wk, Wv, bq, bk, bv, Wo, bo, mistake)[name]
    grad.__name__ = f"multihead_attention_d{name}" + (f"_{mistake}" if mistake else "")
    return grad


# --- recurrent cells ----------------------------------------------------------------------------

def _rnn(g, x, h_prev, Wxh, Whh, bh, mistake=None):
    a = x @ Wxh + h_prev @ Whh + bh
    da = g if mistake == "no_tanh" else g / np.cosh(a) ** 2
    h = np.tanh(a)
    return {"x": da @ Wxh.T, "h_prev": da @ (Whh if mistake == "no_transpose" else Whh.T),
            "Wxh": x.T @ da, "Whh": (h if mistake == "new_h" else h_prev).T @ da, "bh": da.sum(0)}


def _rnn_grad(name, mistake=None):
    def grad(g, x, h_prev, Wxh, Whh, bh):
        return _rnn(g, x, h_prev, Wxh, Whh, bh, mistake)[name]
    grad.__name__ = f"rnn_cell_d{name}" + (f"_{mistake}" if mistake else "")
    return grad


def _lstm(g_h, g_c, x, h_prev, c_prev, W, b, mistake=None):
    I = x.shape[1]
    xh = np.concatenate([x, h_prev], axis=1)
    z = np.einsum("nk,kqu->nqu", xh, W) + b
    i, f, o, cc = logistic(z[:, 0]), logistic(z[:, 1]), logistic(z[:, 2]), np.tanh(z[:, 3])
    c = f * c_prev + i * cc
    tc = np.tanh(c)
    dtanh = 1.0 if mistake == "no_tanh_grad" else 1 - tc ** 2
    dc = (0.0 if mistake == "ignore_g_c" else g_c) + g_h * o * dtanh
    dz = np.stack([dc * cc * i * (1 - i), dc * c_prev * f * (1 - f), g_h * tc * o * (1 - o),
                   dc * i * (1 - cc ** 2)], axis=1)
    dxh = np.einsum("nqu,kqu->nk", dz, W)
    return {"x": dxh[:, :I], "h_prev": dxh[:, I:], "c_prev": dc * f,
            "W": np.einsum("nk,nqu->kqu", xh, dz), "b": dz.sum(0)}


def _lstm_grad(name, mistake=None):
    def grad(g_h, g_c, x, h_prev, c_prev, W, b):
        return _lstm(g_h, g_c, x, h_prev, c_prev, W, b, mistake)[name]
    grad.__name__ = f"lstm_cell_d{name}" + (f"_{mistake}" if mistake else "")
    return grad


# --- convolution and pooling (stride 1, no padding; 2x2 windows, stride 2), CS231n-style loops ----

def conv1d_dx(g, w):
    """Full correlation of g with the flipped kernel, one tap at a time."""
    K, Wo = w.shape[2], g.shape[2]
    dx = np.zeros((g.shape[0], w.shape[1], Wo + K - 1))
    for k in range(K):
        dx[:, :, k:k + Wo] += np.einsum("noi,oc->nci", g, w[:, :, k])
    return dx


def conv1d_dx_unflipped(g, w):
    return conv1d_dx(g, w[:, :, ::-1])  # mistake: the kernel is not flipped


def conv1d_dw(g, x):
    Wo = g.shape[2]
    return np.stack([np.einsum("noi,nci->oc", g, x[:, :, k:k + Wo]) for k in range(x.shape[2] - Wo + 1)], -1)


def conv1d_dw_batch_mean(g, x):
    return conv1d_dw(g, x) / x.shape[0]  # mistake: averaged over the batch


def conv1d_db(g):
    return g.sum((0, 2))


def conv2d_dx(g, w):
    KH, KW = w.shape[2:]
    Ho, Wo = g.shape[2:]
    dx = np.zeros((g.shape[0], w.shape[1], Ho + KH - 1, Wo + KW - 1))
    for kh in range(KH):
        for kw in range(KW):
            dx[:, :, kh:kh + Ho, kw:kw + Wo] += np.einsum("noij,oc->ncij", g, w[:, :, kh, kw])
    return dx


def conv2d_dx_unflipped(g, w):
    return conv2d_dx(g, w[:, :, ::-1, ::-1])  # mistake: the kernel is not flipped


def conv2d_dw(g, x):
    Ho, Wo = g.shape[2:]
    KH, KW = x.shape[2] - Ho + 1, x.shape[3] - Wo + 1
    dw = np.zeros((g.shape[1], x.shape[1], KH, KW))
    for kh in range(KH):
        for kw in range(KW):
            dw[:, :, kh, kw] = np.einsum("noij,ncij->oc", g, x[:, :, kh:kh + Ho, kw:kw + Wo])
    return dw


def conv2d_dw_transposed_window(g, x):
    Ho, Wo = g.shape[2:]
    KH, KW = x.shape[2] - Ho + 1, x.shape[3] - Wo + 1
    dw = np.zeros((g.shape[1], x.shape[1], KH, KW))
    for kh in range(KH):
        for kw in range(KW):  # mistake: the window of tap (kh, kw) taken at (KH-1-kh, KW-1-kw)
            a, b = KH - 1 - kh, KW - 1 - kw
            dw[:, :, kh, kw] = np.einsum("noij,ncij->oc", g, x[:, :, a:a + Ho, b:b + Wo])
    return dw


def conv2d_db(g):
    return g.sum((0, 2, 3))


def conv2d_db_no_batch(g):
    return g[0].sum((1, 2))  # mistake: the first sample only


def _windows(x):
    """x's 2x2 stride-2 windows as (N, C, Ho, Wo, 4), each row-major (kh, kw)."""
    N, C, H, W = x.shape
    Ho, Wo = H // 2, W // 2
    v = x[:, :, :2 * Ho, :2 * Wo].reshape(N, C, Ho, 2, Wo, 2)
    return v.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, Ho, Wo, 4)


def _unwindow(d, shape):
    N, C, Ho, Wo, _ = d.shape
    out = np.zeros(shape)
    out[:, :, :2 * Ho, :2 * Wo] = d.reshape(N, C, Ho, Wo, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, 2 * Ho, 2 * Wo)
    return out


def max_pool2d_dx(g, x):
    """The window's first maximum (np.argmax: row-major) takes g."""
    win = _windows(x)
    mask = np.eye(4)[win.argmax(-1)]
    return _unwindow(mask * g[..., None], x.shape)


def max_pool2d_dx_whole_window(g, x):
    return _unwindow(np.repeat(g[..., None], 4, -1), x.shape)  # mistake: every element takes g


def max_pool2d_dx_ignores_g(g, x):
    return _unwindow(np.eye(4)[_windows(x).argmax(-1)], x.shape)  # mistake: the mask, not g


def avg_pool2d_dx(g, x):
    return _unwindow(np.repeat(g[..., None], 4, -1) / 4, x.shape)


def avg_pool2d_dx_no_mean(g, x):
    return _unwindow(np.repeat(g[..., None], 4, -1), x.shape)  # mistake: 1/4 forgotten


def avg_pool2d_dx_half(g, x):
    return _unwindow(np.repeat(g[..., None], 4, -1) / 2, x.shape)  # mistake: 1/2 (one axis)


def flatten_dx(g, x):
    return g.reshape(x.shape)


def flatten_dx_fortran(g, x):
    return g.reshape(x.shape, order="F")  # mistake: column-major


def flatten_dx_channels_last(g, x):
    N, C, H, W = x.shape
    return g.reshape(N, H, W, C).transpose(0, 3, 1, 2)  # mistake: as if flattened NHWC


# --- the tables ---------------------------------------------------------------------------------

RIGHT = {
    "linear": [("x", linear_dx, "einsum"), ("W", linear_dW, "sum of per-sample outer products"),
               ("b", linear_db, "ones @ g")],
    "relu": [("x", relu_dx, "where(x > 0, g, 0)")],
    "tanh": [("x", tanh_dx, "g sech^2(x)")],
    "sigmoid": [("x", sigmoid_dx, "g s(x) s(-x)")],
    "gelu": [("x", gelu_dx, "product rule with sech^2")],
    "gelu_erf": [("x", gelu_erf_dx, "Phi(x) + x phi(x) via erfc")],
    "softmax": [("x", softmax_dx_jacobian, "explicit Jacobian")],
    "log_softmax": [("x", log_softmax_dx_jacobian, "explicit Jacobian")],
    "cross_entropy": [("logits", cross_entropy_dlogits, "(softmax - onehot) / N")],
    "mse": [("pred", mse_dpred, "2 (pred - target) / size"), ("target", mse_dtarget, "2 (target - pred) / size")],
    "layernorm": [("x", layernorm_dx, "expanded textbook form through dvar, dmean"),
                  ("gamma", layernorm_dgamma, "sum g xhat"), ("beta", layernorm_dbeta, "sum g")],
    "embedding": [("table", embedding_dtable, "one-hot^T @ g")],
    "residual": [("a", residual_da, "identity"), ("b", residual_db, "identity")],
    "attention": [("q", attention_dq, "matrix form"), ("k", attention_dk, "matrix form"),
                  ("v", attention_dv, "matrix form")],
    "multihead_attention": [(n, _mha_grad(n), "einsum per head")
                            for n in ("x", "Wq", "Wk", "Wv", "bq", "bk", "bv", "Wo", "bo")],
    "rnn_cell": [(n, _rnn_grad(n), "matrix form, sech^2") for n in ("x", "h_prev", "Wxh", "Whh", "bh")],
    "lstm_cell": [(n, _lstm_grad(n), "gate by gate") for n in ("x", "h_prev", "c_prev", "W", "b")],
    "conv1d": [("x", conv1d_dx, "full correlation, tap by tap"), ("w", conv1d_dw, "window by window"),
               ("b", conv1d_db, "sum over batch and positions")],
    "conv2d": [("x", conv2d_dx, "full correlation, tap by tap"), ("w", conv2d_dw, "window by window"),
               ("b", conv2d_db, "sum over batch and positions")],
    "max_pool2d": [("x", max_pool2d_dx, "one-hot of the window's argmax")],
    "avg_pool2d": [("x", avg_pool2d_dx, "g / 4 on each window")],
    "flatten": [("x", flatten_dx, "reshape")],
}

WRONG = {
    "linear": [("b", linear_db_mean, "spurious 1/N"), ("W", linear_dW_outer_of_sums, "outer product of sums"),
               ("x", linear_dx_sign, "sign error")],
    "relu": [("x", relu_dx_no_mask, "mask forgotten"), ("x", relu_dx_relu_of_g, "relu of g")],
    "tanh": [("x", tanh_dx_no_square, "square forgotten"), ("x", tanh_dx_sign, "sign error")],
    "sigmoid": [("x", sigmoid_dx_no_complement, "(1 - s) forgotten"), ("x", sigmoid_dx_sign, "sign error")],
    "gelu": [("x", gelu_dx_no_product_rule, "product rule term dropped"),
             ("x", gelu_dx_inner_chain, "factor 3 of the inner derivative lost")],
    "gelu_erf": [("x", gelu_erf_dx_no_x_phi, "x phi(x) dropped"),
                 ("x", gelu_erf_dx_unnormalized_phi, "phi without 1/sqrt(2 pi)")],
    "softmax": [("x", softmax_dx_no_cross_term, "missing cross term"),
                ("x", softmax_dx_unweighted_sum, "sum(g) instead of sum(g s)")],
    "log_softmax": [("x", log_softmax_dx_elementwise, "s g instead of s sum(g)"),
                    ("x", log_softmax_dx_no_sum, "assumes sum(g) = 1")],
    "cross_entropy": [("logits", cross_entropy_no_mean, "missing 1/N"), ("logits", cross_entropy_sign, "sign error"),
                      ("logits", cross_entropy_ignores_g, "upstream g ignored")],
    "mse": [("pred", mse_dpred_no_mean, "missing 1/(N C)"), ("pred", mse_dpred_per_row, "1/N instead of 1/(N C)"),
            ("target", mse_dtarget_sign, "sign error")],
    "layernorm": [("x", layernorm_dx_no_var_path, "variance path dropped"),
                  ("x", layernorm_dx_sums_not_means, "missing 1/C"),
                  ("x", layernorm_dx_no_eps, "eps left out of the backward"),
                  ("gamma", layernorm_dgamma_no_xhat, "xhat forgotten")],
    "embedding": [("table", embedding_dtable_fancy_add, "repeated ids lost by fancy +="),
                  ("table", embedding_dtable_mean, "averaged instead of summed")],
    "residual": [("a", residual_half, "gradient split in half"), ("b", residual_double, "skip counted twice")],
    "attention": [("q", attention_dq_no_scale, "scale left out"), ("v", attention_dv_no_mask, "causal mask ignored"),
                  ("k", attention_dk_no_transpose, "forgotten transpose")],
    "multihead_attention": [("x", _mha_grad("x", "q_path_only"), "k and v paths missing"),
                            ("Wq", _mha_grad("Wq", "no_scale"), "scale left out")],
    "rnn_cell": [("h_prev", _rnn_grad("h_prev", "no_transpose"), "forgotten transpose"),
                 ("x", _rnn_grad("x", "no_tanh"), "tanh derivative forgotten"),
                 ("Whh", _rnn_grad("Whh", "new_h"), "uses h instead of h_prev")],
    "lstm_cell": [("c_prev", _lstm_grad("c_prev", "ignore_g_c"), "cell state's own upstream ignored"),
                  ("h_prev", _lstm_grad("h_prev", "no_tanh_grad"), "tanh'(c) forgotten")],
    "conv1d": [("x", conv1d_dx_unflipped, "kernel not flipped"), ("w", conv1d_dw_batch_mean, "averaged over the batch")],
    "conv2d": [("x", conv2d_dx_unflipped, "kernel not flipped"),
               ("w", conv2d_dw_transposed_window, "each tap's window taken from the opposite corner"),
               ("b", conv2d_db_no_batch, "first sample only")],
    "max_pool2d": [("x", max_pool2d_dx_whole_window, "every element takes g"),
                   ("x", max_pool2d_dx_ignores_g, "the mask without g")],
    "avg_pool2d": [("x", avg_pool2d_dx_no_mean, "1/4 forgotten"), ("x", avg_pool2d_dx_half, "1/2 instead of 1/4")],
    "flatten": [("x", flatten_dx_fortran, "column-major reshape"),
                ("x", flatten_dx_channels_last, "channels-last order")],
}

# Layers whose generated shapes could leave no output position (a kernel larger than its input):
# verified at these shapes instead (odd sizes: the pools' last row and column are in no window).
_CONV = [{"N": 2, "C": 2, "O": 3, "H": 5, "W": 6, "KH": 3, "KW": 2},
         {"N": 1, "C": 1, "O": 2, "H": 3, "W": 4, "KH": 1, "KW": 1}]
SHAPES = {"conv1d": [{"N": 2, "C": 3, "O": 2, "W": 7, "K": 3}, {"N": 1, "C": 1, "O": 1, "W": 3, "K": 1}],
          "conv2d": _CONV,
          **{p: [{"N": 2, "C": 3, "H": 5, "W": 6}, {"N": 1, "C": 1, "H": 2, "W": 2}] for p in ("max_pool2d", "avg_pool2d")},
          "flatten": [{"N": 2, "C": 3, "H": 2, "W": 4}, {"N": 1, "C": 1, "H": 1, "W": 1}]}


# --- the tests ----------------------------------------------------------------------------------

import pytest  # noqa: E402

import derive  # noqa: E402
from derive.verify import verify  # noqa: E402

BUILTIN = derive.layers()
RIGHT_CASES = [pytest.param(name, wrt, fn, id=f"{name}-d{wrt}-{fn.__name__}")
               for name, rows in RIGHT.items() for wrt, fn, _ in rows]
WRONG_CASES = [pytest.param(name, wrt, fn, what, id=f"{name}-d{wrt}-{fn.__name__}")
               for name, rows in WRONG.items() for wrt, fn, what in rows]
HEAVY = {"multihead_attention": 1, "lstm_cell": 2, "attention": 2}  # fewer random trials: slow reference


def _verify(name, wrt, fn):
    if name not in SHAPES:
        return verify(name, wrt, fn, trials=HEAVY.get(name, 3), seed=1)
    # verify's shrinker tries every dim at 1 and 2, which leaves a window larger than its input
    # (no output position: a ValueError inside verify); the counterexample is then the failing case
    import importlib
    from unittest import mock
    with mock.patch.object(importlib.import_module("derive.verify_shrink"), "SHRINK_BUDGET", 0):
        return verify(name, wrt, fn, trials=HEAVY.get(name, 3), seed=1, shapes=SHAPES[name])


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_layer_has_a_hand_derivation_and_two_mistakes(name):
    assert name in RIGHT, f"layer '{name}' has no hand-derived gradient in {__name__}.RIGHT yet"
    assert len(WRONG.get(name, [])) >= 2, f"layer '{name}' needs at least two plausible mistakes in WRONG"


@pytest.mark.parametrize("name", BUILTIN)
def test_hand_derivations_cover_every_differentiable_argument(name):
    d = derive.layer(name)
    want = {a.name for a in d.arguments if a.differentiable}
    have = {wrt for wrt, _, _ in RIGHT.get(name, [])}
    assert want <= have, f"layer '{name}': no hand derivation for d{sorted(want - have)}"


@pytest.mark.parametrize("name, wrt, fn", RIGHT_CASES)
def test_hand_derivation_is_accepted(name, wrt, fn):
    report = _verify(name, wrt, fn)
    assert report.verdict == "matches", str(report)
    assert report.max_rel_error < 1e-7, str(report)


@pytest.mark.parametrize("name, wrt, fn, what", WRONG_CASES)
def test_plausible_mistake_is_rejected_with_a_counterexample(name, wrt, fn, what):
    report = _verify(name, wrt, fn)
    assert report.verdict == "wrong", f"{what}: " + str(report)
    ce = report.counterexample
    assert ce is not None, str(report)
    assert abs(ce.expected_value - ce.got_value) > 0
    assert np.asarray(ce.got).shape == np.asarray(ce.expected).shape
    text = str(report)
    assert "counterexample" in text and f"d{wrt}[" in text
