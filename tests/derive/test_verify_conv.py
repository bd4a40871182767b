"""verify on hand-written convolution and max-pooling backward passes, CS231n-style
(`conv_backward_naive`, `max_pool_backward_naive` adapted to `candidate(g, **inputs)`): right
ones accepted, the classic mistakes rejected with a counterexample."""

import numpy as np
import pytest

from symgrad.derive.verify import verify


def conv_backward(stride, pad, *, ignore_stride=False, forget_pad=False, dw_over_channels=False):
    """CS231n's conv_backward_naive as a candidate for conv2d (stride, pad), returning (dx, dw, db);
    the flags put in one classic mistake each."""
    def backward(g, x, w):
        N, C, H, W = x.shape
        F, _, HH, WW = w.shape
        s = 1 if ignore_stride else stride
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        dxp, dw = np.zeros_like(xp), np.zeros_like(w)
        for n in range(N):
            for f in range(F):
                for i in range(g.shape[2]):
                    for j in range(g.shape[3]):
                        win = xp[n, :, i * s:i * s + HH, j * s:j * s + WW]
                        if win.shape[1:] != (HH, WW):
                            continue
                        contrib = g[n, f, i, j] * win
                        dw[f] += contrib.sum(axis=0, keepdims=True) if dw_over_channels else contrib
                        dxp[n, :, i * s:i * s + HH, j * s:j * s + WW] += g[n, f, i, j] * w[f]
        dx = dxp[:, :, :H, :W] if forget_pad else dxp[:, :, pad:pad + H, pad:pad + W]
        return dx, dw, g.sum(axis=(0, 2, 3))
    return backward


def conv_dx_as_transposed_convolution(flip=True):
    """dx of a stride-1, padding-1 conv as the full correlation of g with the flipped kernel; with
    flip=False, the kernel used as it is (the classic slip)."""
    def dx(g, w, x):
        N, C, H, W = x.shape
        F, _, K, _ = w.shape
        kern = w[:, :, ::-1, ::-1] if flip else w
        gp = np.pad(g, ((0, 0), (0, 0), (K - 2, K - 2), (K - 2, K - 2)))  # full correlation, padding 1 undone
        out = np.zeros_like(x)
        for r in range(H):
            for c in range(W):
                out[:, :, r, c] = np.einsum("nfij,fcij->nc", gp[:, :, r:r + K, c:c + K], kern)
        return out
    return dx


def max_pool_backward(split_ties=False):
    """CS231n's max_pool_backward_naive (2x2 windows, stride 2): the gradient to the first
    maximum (np.argmax), or, wrongly, shared among tied maxima."""
    def dx(g, x):
        out = np.zeros_like(x)
        N, C, Ho, Wo = g.shape
        for n in range(N):
            for c in range(C):
                for i in range(Ho):
                    for j in range(Wo):
                        win = x[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                        if split_ties:
                            mask = win == win.max()
                            out[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2] += g[n, c, i, j] * mask / mask.sum()
                        else:
                            a, b = np.unravel_index(np.argmax(win), win.shape)
                            out[n, c, 2 * i + a, 2 * j + b] += g[n, c, i, j]
        return out
    return dx


SHAPES = [{"N": 2, "C": 2, "O": 3, "H": 5, "W": 4, "KH": 3, "KW": 3}]


def test_right_conv_backward_with_stride_and_padding_is_accepted_for_all_three_gradients():
    r = verify("conv2d_s2_p1", "x,w,b", conv_backward(2, 1), shapes=SHAPES)
    assert r.ok, str(r)


@pytest.mark.parametrize("mistake, wrong", [("ignore_stride", ["x", "w"]), ("forget_pad", ["x"]),
                                            ("dw_over_channels", ["w"])])
def test_classic_conv_backward_mistakes_are_rejected_naming_the_gradient(mistake, wrong):
    r = verify("conv2d_s2_p1", "x,w,b", conv_backward(2, 1, **{mistake: True}), shapes=SHAPES)
    assert r.verdict == "wrong", str(r)
    assert r.wrong == wrong, str(r)
    for name in wrong:
        assert r[name].counterexample is not None, str(r)


def test_dx_as_a_transposed_convolution_needs_the_flipped_kernel():
    shapes = [{"N": 2, "C": 2, "O": 2, "H": 4, "W": 5, "KH": 3, "KW": 3}]
    assert verify("conv2d_p1", "x", conv_dx_as_transposed_convolution(), shapes=shapes).ok
    r = verify("conv2d_p1", "x", conv_dx_as_transposed_convolution(flip=False), shapes=shapes)
    assert r.verdict == "wrong" and r.counterexample is not None, str(r)
    assert "counterexample" in str(r)


def test_max_pool_ties_go_to_the_first_maximum_and_verify_tests_ties_on_purpose():
    right = verify("max_pool2d", "x", max_pool_backward())
    assert right.ok, str(right)
    assert any(c.label.startswith("ties") for c in right.cases)
    split = verify("max_pool2d", "x", max_pool_backward(split_ties=True))
    assert split.verdict == "wrong", str(split)
    failing = [c.label for c in split.cases if not c.ok]
    assert failing == [c for c in failing if c.startswith("ties")] and failing  # only ties tell them apart
