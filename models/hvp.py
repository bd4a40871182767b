"""The whole-model Hessian-vector product, through the model graph (Pearlmutter's R-operator).

For a loss L(θ) of a model graph and a direction v over its parameters, H v = d/dε ∇L(θ + ε v)
at ε = 0. Each node y = f(a) of the graph contributes through three derived kernels of its
layer, nothing written for the model:

- the tangent forward:  ẏ = J_f ȧ                      (the layer's JVP: derive.second_order)
- the backward:         ḡ_a = J_fᵀ ḡ_y                 (the layer's first-order backward)
- the tangent backward: (ḡ_a)˙ = H_f[ḡ_y] ȧ + J_fᵀ (ḡ_y)˙

where H_f[ḡ_y] ȧ is the layer's HVP kernel (the Hessian of sum ḡ_y·y in all of f's arguments,
upstream held fixed) and J_fᵀ (ḡ_y)˙ is the first-order backward again, fed the tangent of the
upstream gradient. A parameter's tangent is its part of v, an input's is zero; the loss's
upstream gradient is 1 and has no tangent. The order of the nodes, the sum over the uses of a
value (the residual stream, tied weights) and the views and stacks between layers come from the
graph exactly as in the planned training step (models.plan); what differs is that this pass
runs node by node from Python with fresh arrays (an HVP is called a few times per measurement,
not once per step), so it serves any model graph, training or not.

    hv = ModelHVP(model.build(model.store, rng, B, T))       # or model.hvp(key, inputs, v)
    loss, grad, Hv = hv(inputs, v)                           # v, grad, Hv: flat, like store.flat

Vectors are flat over the parameter store (`store.flat`'s layout, padding zero), so conjugate
gradients and power iteration (models.newton, models.sharpness) work on plain 1-D arrays.
"""

from __future__ import annotations

import numpy as np

from symgrad.compiled.second_order import second_order_kernels

from .graph import GraphError, ModelGraph, Value
from .plan import kernels_of


class ModelHVP:
    """Loss, gradient and H v of one model graph (see the module docstring)."""

    def __init__(self, graph: ModelGraph):
        if graph.loss_value is None:
            raise GraphError(f"{graph.name}: a Hessian-vector product needs a loss (G.loss(v))")
        self.graph, self.dtype, self.store = graph, graph.dtype, graph.store
        self.store.allocate()
        self.kernels = {id(n): kernels_of(n.derivation, self.dtype) for n in graph.nodes}
        self.second = {}  # second-order kernels, compiled on first use (a node with a tangent)
        self.inputs = [v for v in graph.values if v.kind == "input" and v.base is None]

    def _so(self, node):
        if id(node) not in self.second:
            self.second[id(node)] = second_order_kernels(node.derivation, self.dtype.name)
        return self.second[id(node)]

    def __call__(self, inputs: dict, v: np.ndarray):
        """(loss, gradient, H v) at the store's current parameters; v flat like store.flat."""
        v = np.asarray(v, self.dtype)
        if v.shape != self.store.flat.shape:
            raise ValueError(f"{self.graph.name}: a direction must be flat like the parameter buffer "
                             f"({self.store.flat.size} elements), got shape {v.shape}")
        return self._run(inputs, v)

    # --- the pass ------------------------------------------------------------------------------
    def _run(self, inputs, v):
        g, st = self.graph, self.store
        val, tan = self._load(inputs, v)
        gflat = np.zeros_like(st.flat)
        hflat = np.zeros_like(st.flat)
        grad, gtan = {}, {}  # root -> flat gradient / its tangent
        for p in g.values:
            if p.kind == "param" and p.base is None:
                grad[id(p)] = st.view(p.name, gflat).reshape(-1)
                gtan[id(p)] = st.view(p.name, hflat).reshape(-1)

        def arr(store, x):  # a slice along an axis (G.unbind) as a C array: the kernels' API wants one
            a = x.view_of(store[id(x.root)])
            return float(a) if x.shape == () else np.ascontiguousarray(a)

        # forward, then the tangent forward (nodes in declaration order: topological)
        for node in g.nodes:
            args = self._args(node, val, arr)
            res = self.kernels[id(node)].forward(**args)
            for b, ov in node.outs.items():
                self._write(val, ov, res[b])
            dots = {a: arr(tan, x) for a, x in node.args.items()
                    if isinstance(x, Value) and id(x.root) in tan and a in node.derivation.grads}
            if dots:
                _, ydots = self._so(node).jvp(args, dots)
                for o, yd in ydots.items():
                    self._write(tan, node.outs[o], yd)
        loss_root = g.loss_value.root

        # the backward and its tangent, nodes in reverse
        for node in reversed(g.nodes):
            d = node.derivation
            outs = [node.outs[o.name] for o in d.outputs]
            if not any(o.root is loss_root or id(o.root) in grad for o in outs):
                continue
            args = self._args(node, val, arr)
            saved = {b: arr(val, ov) for b, ov in node.outs.items()}
            ups, uptans = {}, {}
            for o, ov in zip(d.outputs, outs):
                u = d.upstream(o.name)
                if ov.root is loss_root:
                    ups[u] = 1.0
                else:
                    ups[u] = arr(grad, ov) if id(ov.root) in grad else _zeros(ov, self.dtype)
                    if id(ov.root) in gtan:
                        uptans[u] = arr(gtan, ov)
            wanted = [a for a in d.grads if isinstance(node.args.get(a), Value)
                      and node.args[a].kind != "input"]
            k = self.kernels[id(node)]
            da = k.backward(**ups, **args, **saved)
            self._accumulate(grad, node, wanted, da)
            dots = {a: arr(tan, x) for a, x in node.args.items()
                    if isinstance(x, Value) and id(x.root) in tan and a in d.grads}
            if dots:
                hv = self._so(node).hvp(args, dots, ups)
                self._accumulate(gtan, node, wanted, hv)
            if uptans:
                full = {u: uptans.get(u, _zeros(ov, self.dtype) if ov.shape else 0.0)
                        for u, ov in ((d.upstream(o.name), node.outs[o.name]) for o in d.outputs)}
                self._accumulate(gtan, node, wanted, k.backward(**full, **args, **saved))
        loss = arr(val, g.loss_value)
        return float(loss), gflat, hflat

    def _load(self, inputs, v):
        """Value buffers (flat per root) and tangent buffers (parameters: views of v)."""
        g, st = self.graph, self.store
        val, tan = {}, {}
        names = {x.name for x in self.inputs}
        for k in inputs:
            if k not in names:
                raise GraphError(f"{g.name}: no input named '{k}' (the inputs are {', '.join(sorted(names))})")
        for x in g.values:
            if x.base is not None:
                continue
            if x.kind == "param":
                val[id(x)] = st.view(x.name).reshape(-1)
                tan[id(x)] = st.view(x.name, v).reshape(-1)
            elif x.kind == "input":
                if x.name not in inputs:
                    raise GraphError(f"{g.name}: input '{x.name}' is not given")
                a = np.asarray(inputs[x.name], np.int64 if x.integer else self.dtype)
                if a.shape != x.shape:
                    raise GraphError(f"{g.name}: input '{x.name}' must have shape {x.shape}, got {a.shape}")
                val[id(x)] = a.reshape(-1)
            else:
                val[id(x)] = np.zeros(max(x.size, 1), self.dtype)
        return val, tan

    @staticmethod
    def _args(node, val, arr) -> dict:
        return {a: (arr(val, x) if isinstance(x, Value) else x) for a, x in node.args.items()}

    def _write(self, store, x: Value, data):
        """Write a node's output into its place (a stack's row, a scalar's one element)."""
        r = x.root
        if id(r) not in store:
            store[id(r)] = np.zeros(max(r.size, 1), self.dtype)
        x.view_of(store[id(r)])[...] = np.asarray(data, self.dtype).reshape(x.shape)

    def _accumulate(self, store, node, wanted, contributions):
        """Add each wanted argument's contribution into its root's gradient (the sum over uses)."""
        for a in wanted:
            x = node.args[a]
            r = x.root
            if id(r) not in store:
                store[id(r)] = np.zeros(max(r.size, 1), self.dtype)
            x.view_of(store[id(r)])[...] += np.asarray(contributions[a], self.dtype).reshape(x.shape)


def _zeros(x: Value, dtype):
    return np.zeros(x.shape, dtype) if x.shape else 0.0


__all__ = ["ModelHVP"]
