"""Planning a model graph's training step: buffers allocated once, the backward read off the graph.

The forward runs the nodes in declaration order (a graph can only read values that exist, so
that order is topological); every binding a layer's forward kernel saves gets its own region of
one activation arena (a stack's parts are rows of the stack's region, a view is the same
elements as its base). The backward visits the nodes in reverse and, for each, calls the
layer's printed backward kernel with the gradients of its outputs. Where a value is read by
several nodes, its gradient is the sum of their contributions (the chain rule's sum over uses):
the first contribution is written in place, each later one into a scratch region and added.

Two things come from the derivations, not from the model:
- which backward kernels write a gradient that *is* the upstream gradient (`residual`:
  da[i, j] = g[i, j]); that gradient shares the upstream buffer instead of being copied, and a
  node all of whose gradients are such is not called at all;
- the shapes and dims of every call (`Kernels.call_shapes`, the same check a call makes).

Gradient regions live in a work arena and are reused by size once every value sharing them has
been read for the last time (its producer's backward ran). Parameter gradients are views of the
store's flat gradient buffer, written directly by the kernels.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from symgrad import compiled
from symgrad.compiled.build import ident as kernel_ident

from .graph import GraphError, Node, Value, aligned

_KERNELS: dict = {}  # (id(derivation), dtype) -> (derivation, Kernels)


def kernels_of(derivation, dtype) -> "compiled.Kernels":
    key = (id(derivation), np.dtype(dtype).name)
    if key not in _KERNELS:
        _KERNELS[key] = (derivation, compiled.kernels(derivation, dtype=np.dtype(dtype).name))
    return _KERNELS[key][1]


def node_shapes(node: Node, dtype) -> dict:
    """{saved binding: shape} of a node's forward call; also sets `node.dims`."""
    k = kernels_of(node.derivation, dtype)
    shapes = {a: v.shape for a, v in node.args.items() if isinstance(v, Value)}
    try:
        node.dims, outs = k.call_shapes(shapes)
    except compiled.KernelError as e:
        raise GraphError(f"node '{node.name}': {e}") from None
    return outs


def identity_grads(d) -> set:
    """Arguments whose derived gradient is exactly the upstream gradient (d<a>[i] = g[i])."""
    ups = {d.upstream(o.name): o for o in d.outputs}
    out = set()
    for name, idx, e in d.program:
        a = d.gradient_of(name)
        if a is None:
            continue
        if isinstance(e, sp.Indexed) and str(e.base.label) in ups and tuple(e.indices) == tuple(idx):
            o = ups[str(e.base.label)]
            if tuple(map(str, o.shape)) == tuple(map(str, d.graph.tensor(a).shape)):
                out.add(a)
    return out


class Slot:
    """A named view of a buffer, an arena ("params", "grads", "acts", "work") or an input's own:
    `buffer[offset:offset+size].reshape(shape)`; or, with `pick` = (whole, axis, index), the slice
    at `index` along `axis` of `buffer[offset:...].reshape(whole)` (a strided part: G.unbind)."""

    def __init__(self, ident, buffer, offset, shape, pick=None):
        self.ident, self.buffer, self.offset, self.shape = ident, buffer, int(offset), tuple(shape)
        self.pick = pick

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def run(self):
        """(shape, elements) of the run of the buffer the slot lies in."""
        shape = self.pick[0] if self.pick else self.shape
        return shape, int(np.prod(shape, dtype=np.int64))

    def of(self, flat):
        """The slot as a view of `flat`, its buffer."""
        shape, n = self.run
        a = flat[self.offset:self.offset + n].reshape(shape)
        return a[(slice(None),) * self.pick[1] + (self.pick[2],)] if self.pick else a

    def text(self) -> str:
        """The slot as Python source over its buffer's name (the printed step's views)."""
        shape, n = self.run
        dims = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
        pick = f"[{':, ' * self.pick[1]}{self.pick[2]}]" if self.pick else ""
        return f"{self.buffer}[{self.offset}:{self.offset + n}].reshape(({dims})){pick}"


class Arena:
    """Bump allocation with a free list per (aligned) size."""

    def __init__(self, name):
        self.name, self.size = name, 0
        self.free: dict[int, list[int]] = {}

    def take(self, size) -> int:
        size = aligned(size)
        if self.free.get(size):
            return self.free[size].pop()
        o = self.size
        self.size += size
        return o

    def give(self, offset, size):
        self.free.setdefault(aligned(size), []).append(offset)


# names the printed step module itself uses (models/step.py), besides the kernels' reserved ones
STEP_NAMES = {"params", "grads", "acts", "work", "r", "forward", "backward", "sibling_module", "KERNELS"}


def ident(name: str) -> str:
    """A Python identifier for a value, node or model name in the printed step."""
    s = kernel_ident(name)
    return s + "_" if s in STEP_NAMES else s


class Plan:
    """Buffers and call order of one model graph (see the module docstring).

    `forward` and `backward` are lists of statements for `models.step` to print:
    ("call", node, kernel function, [argument expressions], [scalar result slots]),
    ("add", destination slot, source slot, node that contributed), ("zero", slot) and
    ("note", text)."""

    def __init__(self, graph, train=True):
        if train and graph.loss_value is None:
            raise GraphError(f"{graph.name}: a training step needs a loss (G.loss(v))")
        self.graph, self.dtype, self.train = graph, graph.dtype, train
        self.store = graph.store
        self.store.allocate()
        self.acts = Arena("acts")
        self.work = Arena("work")
        self.slots: dict[str, Slot] = {}
        self._by_place: dict = {}  # (buffer, offset, shape) -> slot name
        self.value_slot: dict[int, str] = {}
        self.grad_region: dict[int, str] = {}  # root value -> the slot of its whole gradient
        self.inputs = [v for v in graph.values if v.kind == "input" and v.base is None]
        self.kernels = {id(n): kernels_of(n.derivation, self.dtype) for n in graph.nodes}
        self.functions: dict[str, tuple] = {}  # printed kernel name -> (Kernels, "forward"|"backward")
        self._fn_names: dict = {}
        self.forward: list = []
        self.backward: list = []
        self._forward_slots()
        self._forward_calls()
        self.param_grads = []
        if train:
            self._backward_plan()

    # --- slots -------------------------------------------------------------------------------
    def _place(self, name, buffer, offset, shape, pick=None) -> str:
        """The slot at (buffer, offset, shape, pick), created under `name` if new."""
        key = (buffer, int(offset), tuple(shape), pick)
        if key in self._by_place:
            return self._by_place[key]
        nm = ident(name)
        while nm in self.slots:
            nm += "_"
        self.slots[nm] = Slot(nm, buffer, offset, shape, pick)
        self._by_place[key] = nm
        return nm

    def _new(self, name, shape, arena: Arena) -> str:
        """A fresh region of `arena` (a name of its own even where a freed region is reused)."""
        shape = tuple(shape) or (1,)
        o = arena.take(int(np.prod(shape, dtype=np.int64)))
        nm = ident(name)
        while nm in self.slots:
            nm += "_"
        self.slots[nm] = Slot(nm, arena.name, o, shape)
        self._by_place.setdefault((arena.name, o, shape, None), nm)
        return nm

    def _sub(self, slot, start, shape, name=None) -> str:
        """The part of slot's buffer at slot.offset + start with `shape`."""
        s = self.slots[slot]
        shape = tuple(shape) or (1,)
        if start == 0 and shape == s.shape:
            return slot
        return self._place(name or f"{slot}_{start}_{'x'.join(map(str, shape))}", s.buffer, s.offset + start,
                           shape)

    def _within(self, v, root_slot, prefix="") -> str:
        """The slot of value v given its root's slot (v's view, row or slice of it); a slot made
        here is named prefix + v's name."""
        if v.base is None:
            return root_slot
        if v.axis is not None:  # a slice along an axis: picked out of its base's slot
            b = self.slots[self._within(v.base, root_slot, prefix)]
            shape = b.shape[:v.axis] + b.shape[v.axis + 1:]
            return self._place(prefix + v.name, b.buffer, b.offset, shape, (b.shape, v.axis, v.index))
        return self._sub(root_slot, v.start, v.shape, prefix + v.name)

    def _forward_slots(self):
        st = self.store
        roots = [v for v in self.graph.values if v.base is None]
        for v in roots:
            if v.kind == "param":
                self.value_slot[id(v)] = self._place(v.name, "params", st.spec[v.name][0], v.shape)
            elif v.kind == "input":
                self.value_slot[id(v)] = self._place(v.name, ident(v.name), 0, v.shape or (1,))
            else:
                self.value_slot[id(v)] = self._new(v.name, v.shape, self.acts)
        for v in self.graph.values:
            if v.base is not None:
                self.value_slot[id(v)] = self._within(v, self.value_slot[id(v.root)])

    def _fn(self, node, which) -> str:
        k = self.kernels[id(node)]
        key = (id(k), which)
        if key not in self._fn_names:
            base = ident(f"{node.layer}_{which}")
            nm, n = base, 1
            while nm in self.functions:
                n += 1
                nm = f"{base}_{n}"
            self._fn_names[key] = nm
            self.functions[nm] = (k, which)
        return self._fn_names[key]

    @staticmethod
    def _literal(x) -> str:
        return f"F({float(x)!r})"

    def _arg(self, v) -> str:
        nm = self.value_slot[id(v)]
        return nm + "[0]" if v.shape == () else nm

    def _call_args(self, node, spec, out, tensor) -> list[str]:
        """The argument expressions of a kernel call, in the kernel's order: dims and constants
        from the node, `out(p)` for an output, `tensor(p)` for every other argument."""
        args = []
        for p in spec.params:
            if p.kind == "dim":
                args.append(str(node.dims[p.name]))
            elif p.kind == "const":
                args.append(self._literal(node.args.get(p.name, p.default)))
            elif p.kind == "out":
                args.append(self._shaped(out(p), p, node))
            else:
                args.append(tensor(p))
        return args

    # --- forward -----------------------------------------------------------------------------
    def _forward_calls(self):
        for node in self.graph.nodes:
            spec = self.kernels[id(node)].forward_spec
            args = self._call_args(node, spec, lambda p: self.value_slot[id(node.outs[p.name])],
                                   lambda p: self._arg(node.args[p.name]))
            rets = [self.value_slot[id(node.outs[r])] for r in spec.returns]
            self.forward.append(("call", node, self._fn(node, "forward"), args, rets))

    # --- backward ----------------------------------------------------------------------------
    def _backward_plan(self):
        g = self.graph
        order = {id(n): i for i, n in enumerate(g.nodes)}
        consumers: dict[int, list[Node]] = {}
        for n in g.nodes:
            for v in n.args.values():
                if isinstance(v, Value):
                    consumers.setdefault(id(v.root), []).append(n)
        needs = self._requires_grad()
        loss = g.loss_value.root
        done: set = set()  # nodes whose backward is planned
        group: dict[tuple, list] = {}  # gradient region (buffer, offset) -> the roots whose gradient it is

        def place(slot):
            return self.slots[slot].buffer, self.slots[slot].offset
        sinks: dict[int, str] = {}
        zeros: dict[tuple, str] = {}

        def next_write(v, now):
            """Forward position of the next node (in backward order) to add into v's gradient."""
            later = [c for c in consumers.get(id(v), []) if id(c) not in done and c is not now]
            return max((order[id(c)] for c in later), default=None)

        def read_pending(u, now):
            """Is u's gradient still to be read (by the backward of a node that wrote u)?"""
            return any(id(p) not in done and p is not now for p in u.producers)

        def first_read(u, now):
            return max(order[id(p)] for p in u.producers if id(p) not in done and p is not now)

        def can_share(v, src, now) -> bool:
            """May v's gradient be the region src (an upstream gradient) itself? Only an
            activation's, never two that still receive additions, and only if every sharer is
            read (by its producer's backward) before the other's next addition."""
            if v.kind != "act":
                return False
            wv = next_write(v, now)
            if place(src) not in group or self.slots[src].size != v.size:
                return False  # src is part of a region (a stack's row): never shared
            for u in group[place(src)]:
                if u is v:
                    continue
                wu = next_write(u, now)
                if wv is not None and wu is not None:
                    return False
                if wv is not None and read_pending(u, now) and first_read(u, now) <= wv:
                    return False
                if wu is not None and read_pending(v, now) and first_read(v, now) <= wu:
                    return False
            return True

        def region_of(v):
            """The region holding root v's whole gradient, made on first use (zeroed when the
            first contribution covers only part of it, as one step of a stack)."""
            if id(v) in self.grad_region:
                return self.grad_region[id(v)], False
            if v.kind == "param":
                nm = self._place("d_" + v.name, "grads", self.store.spec[v.name][0], v.shape)
            else:
                nm = self._new("d_" + v.name, v.shape, self.work)
            self.grad_region[id(v)] = nm
            group.setdefault(place(nm), []).append(v)
            return nm, True

        def grad_of(v):
            """The slot of value v's gradient (v's part of its root's gradient region)."""
            if v.strided:
                return self._within(v, self.grad_region[id(v.root)], "d_")
            return self._sub(self.grad_region[id(v.root)], v.start, v.shape or (1,))

        for node in reversed(g.nodes):
            d = node.derivation
            spec = self.kernels[id(node)].backward_spec
            wanted = [a for a in d.grads if isinstance(node.args.get(a), Value) and id(node.args[a].root) in needs]
            live = [o for o in d.outputs if node.outs[o.name].root is loss
                    or id(node.outs[o.name].root) in self.grad_region]
            if not live or not wanted:
                done.add(id(node))
                continue
            ups = {}
            for o in d.outputs:
                ov = node.outs[o.name]
                if ov.root is loss:  # d loss / d loss: the backward's seed, 1 unless a share (models.shards)
                    ups[d.upstream(o.name)] = "F(seed)"
                elif id(ov.root) in self.grad_region:
                    ups[d.upstream(o.name)] = grad_of(ov)
                else:  # an output nothing downstream read: its gradient is zero
                    if ov.shape not in zeros:
                        zeros[ov.shape] = self._new(f"zeros_{'x'.join(map(str, ov.shape)) or '1'}", ov.shape,
                                                    self.work)
                    ups[d.upstream(o.name)] = zeros[ov.shape]
            identity = identity_grads(d)
            up = ups.get(d.upstream(d.outputs[0].name)) if len(d.outputs) == 1 else None
            up = up if up in self.slots else None
            outs, post, called = {}, [], False

            def will_write(a):
                v = node.args.get(a)
                return isinstance(v, Value) and next_write(v.root, node) is not None

            direct, covered = self._slices_written_here(node, wanted, next_write)

            # final (read-only) gradients share first, then at most one that still receives writes
            for a in sorted(d.grads, key=will_write):
                v = node.args.get(a)
                shape = tuple(v.shape) if isinstance(v, Value) else ()
                if a not in wanted:
                    outs[a] = self._sink(sinks, shape)
                    called = called or a not in identity
                    continue
                root = v.root
                if a in direct:  # a slice of a value no other node adds into: written in place
                    region, fresh = region_of(root)
                    if fresh and id(root) not in covered:  # the slices leave some of it: 0
                        self.backward.append(("zero", region))
                    called = True
                    outs[a] = grad_of(v)
                    continue
                whole = not v.strided and v.start == 0 and v.size == root.size
                if a in identity and up is not None:
                    if id(root) in self.grad_region:  # a later use: add the upstream gradient itself
                        post.append(("add", grad_of(v), up, node))
                        outs[a] = self._sink(sinks, shape)
                        continue
                    if whole and can_share(root, up, node):
                        self.grad_region[id(root)] = self._sub(up, 0, root.shape or (1,))
                        group[place(up)].append(root)
                        post.append(("note", f"{node.name} ({d.name}): d{a} is the upstream gradient {up}, "
                                             f"no copy"))
                        outs[a] = self._sink(sinks, shape)
                        continue
                called = True
                if id(root) not in self.grad_region and whole:
                    region_of(root)
                    outs[a] = grad_of(v)
                    continue
                region, fresh = region_of(root)
                if fresh:  # the first contribution covers part of the value: the rest starts at 0
                    self.backward.append(("zero", region))
                scratch = self._new(f"d_{v.name}_from_{node.name}", shape, self.work)
                outs[a] = scratch
                post.append(("add", grad_of(v), scratch, node))
                post.append(("free", scratch))
            if called:
                def tensor(p):
                    if p.name in ups:
                        u = ups[p.name]
                        return u + "[0]" if p.kind == "scalar" and u in self.slots else u
                    return self._arg(node.outs[p.name] if p.name in node.outs else node.args[p.name])
                args = self._call_args(node, spec, lambda p: outs[d.gradient_of(p.name)], tensor)
                rets = [outs[d.gradient_of(r)] for r in spec.returns]
                self.backward.append(("call", node, self._fn(node, "backward"), args, rets))
            for st in post:
                if st[0] == "free":
                    s = self.slots[st[1]]
                    self.work.give(s.offset, s.size)
                else:
                    self.backward.append(st)
            done.add(id(node))
            # regions whose every sharer has been read for the last time are free for reuse
            for (buf, off), members in list(group.items()):
                if all(not read_pending(w, None) and next_write(w, None) is None for w in members):
                    if buf == "work":
                        self.work.give(off, members[0].size or 1)
                    del group[(buf, off)]
        self.param_grads = [v for v in g.values if v.kind == "param" and id(v) in self.grad_region]

    def _slices_written_here(self, node, wanted, next_write):
        """(args, roots): the arguments of `node` whose gradients its backward writes straight
        into their places in their root's gradient, and the roots those places cover whole.

        An argument qualifies when it is a slice along an axis (G.unbind) of a value that nothing
        else adds a gradient into: no other node reads that root (none before this one in the
        backward, none after), and every argument of this node
        on it is another slice of the same base along the same axis (attention_heads' q, k, v of
        the GPT's projection: three disjoint slices, written where they lie, no copy, no add)."""
        by_root: dict = {}
        for a in wanted:
            by_root.setdefault(id(node.args[a].root), []).append(a)
        direct, covered = set(), set()
        for r, args in by_root.items():
            vs = [node.args[a] for a in args]
            others = [a for a, x in node.args.items() if isinstance(x, Value) and id(x.root) == r and a not in args]
            first = vs[0]
            if others or first.axis is None or first.base.strided or r in self.grad_region \
                    or next_write(first.root, node) is not None:
                continue
            if any(v.base is not first.base or v.axis != first.axis for v in vs) or \
                    len({v.index for v in vs}) != len(vs):
                continue
            direct |= set(args)
            base = first.base
            if len(vs) == base.shape[first.axis] and base.start == 0 and base.size == base.root.size:
                covered.add(r)
        return direct, covered

    def products(self) -> list:
        """The matrix products the step's kernels call, bound to this plan's shapes:
        (label, M, K, N, a transposed, b transposed, calls, mode) per product a called kernel
        prints, mode as compiled/parallel.py records it ("batch": the calls side by side, one thread
        each; "rows": in row blocks, one per thread; "": one call), forward then backward."""
        out = []
        for which, calls in (("forward", self.forward), ("backward", self.backward)):
            for st in calls:
                if st[0] != "call":
                    continue
                node = st[1]
                k = self.kernels[id(node)]
                spec = k.forward_spec if which == "forward" else k.backward_spec
                dims = {d: node.dims[str(d)] for d in node.derivation.graph.dims_}
                for M, K, N, ta, tb, n, mode in spec.products:
                    M, K, N, n = (int(sp.sympify(x).subs(dims)) for x in (M, K, N, n))
                    out.append((f"{node.name} {which}", M, K, N, ta, tb, n, mode))
        return out

    def _sink(self, sinks, shape) -> str:
        """Where a kernel writes a gradient nobody reads (one region per size, shared)."""
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n not in sinks:
            sinks[n] = self._new(f"unused_grad_{n}", (n,), self.work)
        return sinks[n]

    def _shaped(self, slot, p, node) -> str:
        """slot as the kernel's out parameter p (a sink is flat: reshape it)."""
        dims = {d: node.dims[str(d)] for d in node.derivation.graph.dims_}
        want = tuple(int(sp.sympify(s).subs(dims)) for s in p.shape) or (1,)
        s = self.slots[slot]
        return slot if s.shape == want else self._place(f"{slot}_{'x'.join(map(str, want))}", s.buffer,
                                                        s.offset, want)

    def _requires_grad(self) -> set:
        """Root values whose gradient the step computes: parameters and everything computed from them."""
        need = {id(v) for v in self.graph.values if v.kind == "param" and v.base is None}
        for n in self.graph.nodes:
            if any(isinstance(x, Value) and id(x.root) in need and a in n.derivation.grads
                   for a, x in n.args.items()):
                need |= {id(o.root) for o in n.outs.values()}
        return need


__all__ = ["Plan", "Slot", "kernels_of", "node_shapes", "identity_grads"]
