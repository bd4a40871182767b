"""The model graph, its plan and its printed step: a model made of a layer that exists only in
the tests trains through the printed step with gradients that match float64 central finite
differences and torch.autograd; values used twice, a parameter shared by two nodes and a stack
of per-step outputs get the sum of their contributions; bad graphs and bad inputs fail in one
line."""

import numpy as np
import pytest

from symgrad.models.graph import GraphError, ModelGraph, ParamStore
from symgrad.models.module import GraphModel
from symgrad.models.optim import AdamW
from symgrad.models.step import Step
from tests.defined_layers import defined


def tiny_graph(store, rng, N, loss=True):
    """x -> linear -> swish (test-only) -> h, used twice: linear a(h) and, with the *same* W, b(h);
    their sum (residual) and both per-row outputs stacked -> linear head -> cross-entropy."""
    swish = defined("t_swish")
    G = ModelGraph("tiny", "float64", store)
    x = G.input("x", (N, 3))

    def p(name, shape):
        return G.param(name, shape, lambda s: rng.standard_normal(s) * 0.7)

    h = G.layer(swish, "act", x=G.layer("linear", "fc", x=x, W=p("fc.W", (3, 4)), b=p("fc.b", (4,))))
    W = p("shared.W", (4, 4))
    a = G.layer("linear", "a", x=h, W=W, b=p("a.b", (4,)))
    b = G.layer("linear", "b", x=h, W=W, b=p("b.b", (4,)))
    s = G.layer("residual", "sum", a=a, b=b)
    t = G.layer(swish, "act2", x=s)
    both = G.view(G.stack([t, G.layer(swish, "act3", x=a)], "both"), (2 * N, 4))
    logits = G.layer("linear", "head", x=both, W=p("head.W", (4, 5)), b=p("head.b", (5,)))
    G.result("logits", logits)
    if loss:
        G.loss(G.layer("cross_entropy", "loss", logits=logits, targets=G.input("y", (2 * N,), integer=True)))
    return G


class Tiny(GraphModel):
    def __init__(self, seed=0):
        super().__init__("float64", seed)
        self.declare((2,))

    def build(self, store, rng, N, loss=True):
        return tiny_graph(store, rng, N, loss)

    def forward(self, x, y):
        return self.run((x.shape[0],), {"x": x, "y": y}, loss=True)


@pytest.fixture(scope="module")
def tiny():
    m = Tiny(seed=1)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 5, 12)
    m(x, y)
    m.backward()
    return m, x, y


def test_test_only_layer_model_gradients_match_central_finite_differences(tiny):
    m, x, y = tiny
    h = 1e-6
    for name, p in m.named_parameters():
        flat, grad = p.data.reshape(-1), p.grad.reshape(-1).copy()
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            up = m(x, y)
            flat[i] = old - h
            down = m(x, y)
            flat[i] = old
            fd = (up - down) / (2 * h)
            assert abs(fd - grad[i]) <= 1e-7 * max(1.0, abs(fd)), f"{name}[{i}]: step {grad[i]!r}, FD {fd!r}"


def test_test_only_layer_model_gradients_match_torch_autograd(tiny):
    torch = pytest.importorskip("torch")
    m, x, y = tiny
    P = {n: torch.tensor(p.data, requires_grad=True) for n, p in m.named_parameters()}

    def swish(v):
        return v * torch.sigmoid(v)

    h = swish(torch.tensor(x) @ P["fc.W"] + P["fc.b"])
    a = h @ P["shared.W"] + P["a.b"]
    b = h @ P["shared.W"] + P["b.b"]
    both = torch.cat([swish(a + b), swish(a)])
    loss = torch.nn.functional.cross_entropy(both @ P["head.W"] + P["head.b"], torch.tensor(y))
    loss.backward()
    assert m(x, y) == pytest.approx(loss.item(), rel=1e-12)
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, P[n].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=n)


def test_printed_step_reads_the_graph_and_sums_the_uses(tiny):
    m, _, _ = tiny
    src = open(m.source_path).read()
    fwd = src[src.index("def forward"):src.index("def backward")]
    bwd = src[src.index("def backward"):]
    # the forward is the nodes in order; the backward in reverse
    order = [n for n in ("fc", "act", "a", "b", "sum", "act2", "act3", "head", "loss")]
    assert [fwd.index(f"# {n}: ") for n in order] == sorted(fwd.index(f"# {n}: ") for n in order)
    assert bwd.index("# head: ") < bwd.index("# a: ") < bwd.index("# fc: ")
    # h feeds a and b, the shared W is read by a and b, a feeds sum and act3: each sum is an add
    assert bwd.count("the gradients add") >= 3
    # the residual's derived gradients are the upstream one itself: no call of its backward
    assert "residual_backward(" not in bwd and "is the upstream gradient" in bwd
    # nothing but kernel calls, adds and comments inside forward and backward
    for line in (fwd + bwd).splitlines()[1:]:
        t = line.strip()
        assert (not t or t.startswith(("#", '"""', "def ", "return", "r = ")) or "_forward(" in t
                or "_backward(" in t or "[...] +=" in t or "[0] = r[" in t or t.endswith('."""')), line


def test_training_through_the_printed_step_lowers_the_loss():
    m = Tiny(seed=2)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 5, 12)
    opt = AdamW(m.parameters(), lr=0.05, wd=0.0)
    assert opt._flat is not None  # the parameters are views of one buffer: one fused update
    first = m(x, y)
    for _ in range(60):
        m(x, y)
        m.backward()
        opt.step()
    assert m(x, y) < 0.5 * first


def test_gradient_regions_are_reused_by_size():
    from symgrad.models.gpt import GPTConfig, gpt_graph
    from symgrad.models.plan import Plan
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=16, dtype="float64")
    plan = Plan(gpt_graph(cfg, ParamStore("float64"), np.random.default_rng(0), 2, 8))
    acts = 2 * 8 * 16
    # three blocks' gradients would need far more than a few (B T, 4C) regions if none were reused
    assert plan.work.size < 12 * acts * 4, plan.work.size


def test_a_bad_graph_fails_in_one_line_naming_the_node():
    G = ModelGraph("bad", "float64", ParamStore("float64"))
    x = G.input("x", (4, 3))
    with pytest.raises(GraphError, match="node 'fc'.*no argument 'w'"):
        G.layer("linear", "fc", x=x, w=G.param("W", (3, 2)), b=G.param("b", (2,)))
    with pytest.raises(GraphError, match="node 'fc2'.*inconsistent shapes"):
        G.layer("linear", "fc2", x=x, W=G.param("W2", (5, 2)), b=G.param("b2", (2,)))
    with pytest.raises(GraphError, match="argument 'b' of linear is not bound"):
        G.layer("linear", "fc3", x=x, W=G.param("W3", (3, 2)))
    with pytest.raises(GraphError, match="cannot view"):
        G.view(x, (5, 2))


def test_step_checks_its_inputs_at_the_boundary(tiny):
    m, x, y = tiny
    with pytest.raises(GraphError, match="input .y. holds indices in \\[1, 7\\], outside \\[0, 4\\]"):
        m(x, np.where(y == 0, 7, y))
    step = m.step_for((6,), loss=True)
    with pytest.raises(GraphError, match="input 'x' has shape \\(5, 3\\)"):
        step.forward(x=x[:5], y=y)
    with pytest.raises(GraphError, match="missing input 'y'"):
        step.forward(x=x)


def test_a_step_without_a_loss_cannot_train():
    G = tiny_graph(ParamStore("float64"), np.random.default_rng(0), 2, loss=False)
    with pytest.raises(GraphError, match="needs a loss"):
        Step(G, train=True)
    assert Step(G, train=False).results["logits"].shape == (4, 5)


# --- slices along an axis (G.unbind): strided views, their gradients written in place ---------

def _slices_graph(store, rng, N, k, use, twice=False):
    """x -> linear (k C columns) viewed (N, k, C) -> its slices along axis 1 -> the test-only
    bilinear form of the two in `use` (and, with `twice`, swish of the first as well) -> mse."""
    C = 3
    G = ModelGraph("slices", "float64", store)
    x = G.input("x", (N, 2))
    h = G.layer("linear", "fc", x=x, W=G.param("fc.W", (2, k * C), lambda s: rng.standard_normal(s) * 0.7),
                b=G.param("fc.b", (k * C,), lambda s: rng.standard_normal(s)))
    u = G.unbind(G.view(h, (N, k, C)), 1, [f"u{i}" for i in range(k)])
    f = G.layer(defined("t_bilinear"), "bil", x=u[use[0]], y=u[use[1]],
                A=G.param("bil.A", (C, C), lambda s: rng.standard_normal(s)))
    pred = G.view(f, (N, 1))
    if twice:  # the first slice read by a second node too: its gradient is a sum
        s = G.layer(defined("t_swish"), "again", x=u[use[0]])
        w = G.layer("linear", "head", x=s, W=G.param("head.W", (C, 1), lambda s: rng.standard_normal(s)),
                    b=G.param("head.b", (1,)))
        pred = G.layer("residual", "total", a=w, b=pred)
    G.loss(G.layer("mse", "loss", pred=pred, target=G.input("t", (N, 1))))
    return G


@pytest.mark.parametrize("k,use,twice", [(2, (0, 1), False), (3, (2, 0), False), (2, (0, 1), True)],
                         ids=["both slices: written in place", "two of three: in place, the rest zeroed",
                              "a slice read twice: added"])
def test_slices_along_an_axis_are_views_whose_gradients_match_finite_differences(k, use, twice):
    store = ParamStore("float64")
    G = _slices_graph(store, np.random.default_rng(4), 5, k, use, twice)
    step = Step(G)
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((5, 2)), rng.standard_normal((5, 1))
    step.forward(x=x, t=t)
    step.backward()
    grad = store.grad.copy()
    src = open(step.source_path).read()
    bwd = src[src.index("def backward"):]
    assert f".reshape((5, {k}, 3))[:, {use[0]}]" in src  # a slice is a view of the linear's output
    assert ("] = 0  #" in bwd) == (k == 3 or twice)  # zeroed where the slices written leave some of it
    assert ("the gradients add" in bwd) == twice  # else bilinear's backward writes d u0, d u1 in place
    h = 1e-6
    for i in np.flatnonzero(np.abs(store.flat) > 0):
        old = store.flat[i]
        store.flat[i] = old + h
        up = step.forward(x=x, t=t)
        store.flat[i] = old - h
        down = step.forward(x=x, t=t)
        store.flat[i] = old
        fd = (up - down) / (2 * h)
        assert abs(fd - grad[i]) <= 1e-7 * max(1.0, abs(fd)), f"parameter element {i}: step {grad[i]!r}, FD {fd!r}"


def test_a_slice_cannot_be_reshaped_or_unbound_again():
    G = ModelGraph("bad", "float64", ParamStore("float64"))
    parts = G.unbind(G.input("x", (4, 3, 2)), 1)
    assert [p.shape for p in parts] == [(4, 2)] * 3 and parts[1].strided
    with pytest.raises(GraphError, match="cannot view x\\[:, 1\\], a slice along an axis"):
        G.view(parts[1], (8,))
    with pytest.raises(GraphError, match="cannot unbind"):
        G.unbind(parts[0], 0)
