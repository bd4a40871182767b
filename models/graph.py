"""A model as a graph of derived layers, declared forward only.

    G = ModelGraph("mlp", "float32", store)
    x = G.input("x", (N, 2))
    y = G.input("y", (N,), integer=True)
    h = G.layer("linear", "fc1", x=x, W=G.param("fc1.W", (2, 64), init), b=G.param("fc1.b", (64,)))
    h = G.layer("tanh", "act1", x=h)
    ...
    G.loss(G.layer("cross_entropy", "loss", logits=logits, targets=y))

Every value has a concrete shape: a graph is one configuration of a model (batch and sequence
length fixed), which `models.plan` turns into buffers and a call order and `models.step` prints.
`G.view(v, shape)` is a reshape that shares `v`'s buffer (its gradient is the same reshape of
`v`'s gradient); `G.unbind(v, axis)` gives the slices of `v` along an axis, strided views of its
buffer (the GPT's q, k, v of its (B, T, 3, H, D) projection; each slice's gradient is the same
slice of `v`'s gradient); there is no other way to move data between layers than a layer, so every
gradient the model computes comes from a derived layer's printed backward kernel, and where a
value is read by several layers the planner adds the contributions (the chain rule's sum over
uses, read off this graph).

Parameters live in a `ParamStore`: one flat buffer for the values and one for the gradients,
each parameter a view of both; graphs of several configurations of one model share the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from symgrad import derive
ALIGN = 16  # elements: parameter and buffer offsets are 64-byte aligned for float32


def normal(rng: np.random.Generator, std: float):
    """A parameter initialiser for `ModelGraph.param`: draws of N(0, std^2) from `rng`."""
    return lambda shape: rng.standard_normal(shape) * std


class GraphError(ValueError):
    """A model graph that cannot be planned (names the node and the argument)."""


@dataclass(eq=False)
class Value:
    """A tensor of the model: an input, a parameter, or a layer's output (or a view of one)."""

    name: str
    shape: tuple
    kind: str  # "input", "param", "act"
    integer: bool = False
    base: "Value | None" = None  # a view: shares base's buffer, from element `offset` on
    producer: "Node | None" = None
    binding: str = ""  # the producing layer's binding this value is
    offset: int = 0
    parts: list = field(default_factory=list)  # a stack: the values laid out in it, in order
    axis: int | None = None  # a slice of base along this axis (G.unbind), at `index`
    index: int = 0

    @property
    def root(self) -> "Value":
        return self.base.root if self.base is not None else self

    @property
    def start(self) -> int:
        """Offset (elements) in the root's buffer of a value whose elements are one run there."""
        if self.strided:
            raise GraphError(f"{self.name} is a slice along an axis: its elements are not one run")
        return self.offset + (self.base.start if self.base is not None else 0)

    @property
    def strided(self) -> bool:
        """A slice along an axis (G.unbind), or part of one: its elements are not one run."""
        return self.axis is not None or (self.base is not None and self.base.strided)

    def view_of(self, flat):
        """This value's elements within `flat`, its root's flat buffer: a view of it."""
        if self.axis is not None:
            return self.base.view_of(flat)[(slice(None),) * self.axis + (self.index,)]
        return flat[self.start:self.start + max(self.size, 1)].reshape(self.shape)

    @property
    def producers(self) -> list:
        """The nodes that write this root value: its producer, or those of a stack's parts."""
        return [self.producer] if self.producer is not None else [p.producer for p in self.parts]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self):
        return f"<Value {self.name} {self.shape}>"


@dataclass(eq=False)
class Node:
    """One application of a derived layer: its arguments bound to values (or numbers, for a
    layer's constants) and every binding its forward kernel saves, as values."""

    name: str
    derivation: object
    args: dict  # argument name -> Value | float
    outs: dict = field(default_factory=dict)  # saved binding name -> Value

    @property
    def layer(self) -> str:
        return self.derivation.name


def aligned(n: int) -> int:
    """n rounded up to a whole number of ALIGN elements."""
    return -(-n // ALIGN) * ALIGN


class ParamStore:
    """Parameters of one model: `flat` and `grad` buffers, `views` and `grads` by name.

    Parameters are added in declaration order, each at a 64-byte aligned offset (padding is
    zero in both buffers, so a fused optimizer pass over the whole buffer leaves it zero)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.spec: dict[str, tuple[int, tuple]] = {}  # name -> (offset, shape)
        self._init: dict[str, np.ndarray] = {}
        self.flat = self.grad = None

    def declare(self, name, shape, init=None):
        shape = tuple(int(s) for s in shape)
        if name in self.spec:
            if self.spec[name][1] != shape:
                raise GraphError(f"parameter '{name}' declared with shape {shape}, before with "
                                 f"{self.spec[name][1]}")
            return
        if self.flat is not None:
            raise GraphError(f"parameter '{name}' declared after the parameter buffer was allocated")
        self.spec[name] = (self._end(), shape)
        if callable(init):
            init = init(shape)
        self._init[name] = np.zeros(shape, self.dtype) if init is None else np.asarray(init, self.dtype)

    def allocate(self):
        """Allocate the flat buffers once (after the first graph declared every parameter)."""
        if self.flat is not None:
            return
        total = self._end()
        self.flat = np.zeros(total, self.dtype)
        self.grad = np.zeros(total, self.dtype)
        for name, init in self._init.items():
            self.view(name)[...] = init
        self._init.clear()

    def flat_like(self, part) -> np.ndarray:
        """A vector laid out like `flat`: each parameter's part is part(shape) (np.ones, a random
        generator's standard_normal), the padding between parameters zero."""
        out = np.zeros(self._end(), self.dtype)
        for name, (_, shape) in self.spec.items():
            self.view(name, out)[...] = part(shape)
        return out

    def view(self, name, buf=None) -> np.ndarray:
        o, s = self.spec[name]
        buf = self.flat if buf is None else buf
        return buf[o:o + int(np.prod(s, dtype=np.int64))].reshape(s)

    def _end(self) -> int:
        """The aligned offset after the last parameter declared."""
        if not self.spec:
            return 0
        o, s = next(reversed(self.spec.values()))
        return o + aligned(int(np.prod(s, dtype=np.int64)))


class ModelGraph:
    """The forward declaration of one model configuration (see the module docstring)."""

    def __init__(self, name: str, dtype, store: ParamStore | None = None):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.store = store if store is not None else ParamStore(dtype)
        self.values: list[Value] = []
        self.nodes: list[Node] = []
        self.loss_value: Value | None = None
        self.results: dict[str, Value] = {}  # what a forward call returns, by name
        self._names: set = set()

    def _new(self, v: Value) -> Value:
        if v.name in self._names:
            raise GraphError(f"{self.name}: the name '{v.name}' is used twice")
        self._names.add(v.name)
        self.values.append(v)
        return v

    def input(self, name, shape, integer=False) -> Value:
        return self._new(Value(name, tuple(int(s) for s in shape), "input", integer))

    def param(self, name, shape, init=None) -> Value:
        """A parameter (created in the store on first use, with `init` — an array, or a function
        of the shape called only then — or zeros)."""
        self.store.declare(name, shape, init)
        return self._new(Value(name, tuple(int(s) for s in shape), "param"))

    def view(self, v: Value, shape, name=None) -> Value:
        """`v` reshaped (no copy; the gradient is the same reshape of v's gradient)."""
        shape = tuple(int(s) for s in shape)
        if v.strided:
            raise GraphError(f"{self.name}: cannot view {v.name}, a slice along an axis, as {shape}")
        if int(np.prod(shape, dtype=np.int64)) != v.size:
            raise GraphError(f"{self.name}: cannot view {v.name} {v.shape} as {shape}")
        return self._new(Value(name or f"{v.name}:{'x'.join(map(str, shape))}", shape, v.kind, v.integer,
                               base=v))

    def row(self, v: Value, i: int, name=None) -> Value:
        """v[i] (a contiguous part: no copy; its gradient is the same part of v's gradient)."""
        if not v.shape or not 0 <= i < v.shape[0] or v.strided:
            raise GraphError(f"{self.name}: {v.name} {v.shape} has no row {i}")
        shape = v.shape[1:]
        n = int(np.prod(shape, dtype=np.int64))
        return self._new(Value(name or f"{v.name}[{i}]", shape, v.kind, v.integer, base=v, offset=i * n))

    def unbind(self, v: Value, axis: int, names=None) -> tuple:
        """The slices of v along `axis`, each of v's shape without that axis: strided views of v's
        buffer (no copy; each slice's gradient is the same slice of v's gradient). The GPT takes
        q, k, v as the three slices of its projection viewed (B, T, 3, H, D)."""
        if v.strided or not 0 <= axis < len(v.shape):
            raise GraphError(f"{self.name}: cannot unbind {v.name} {v.shape} along axis {axis}")
        shape = v.shape[:axis] + v.shape[axis + 1:]
        n = v.shape[axis]
        names = names or [f"{v.name}[{':, ' * axis}{i}]" for i in range(n)]
        if len(names) != n:
            raise GraphError(f"{self.name}: {v.name} has {n} slices along axis {axis}, {len(names)} names given")
        return tuple(self._new(Value(nm, shape, v.kind, v.integer, base=v, axis=axis, index=i))
                     for i, nm in enumerate(names))

    def stack(self, values: list, name: str) -> Value:
        """One value (len(values), *shape) whose rows are `values`: each layer writes its output
        straight into its row (a concatenation without a copy; each part's gradient is its row of
        the stack's gradient)."""
        shape = values[0].shape
        for v in values:
            if v.kind != "act" or v.base is not None or v.parts or v.shape != shape or v.producer is None:
                raise GraphError(f"{self.name}: stack '{name}': {v.name} is not a layer output of shape {shape} "
                                 f"that is not already part of a stack")
        s = self._new(Value(name, (len(values), *shape), "act", parts=list(values)))
        n = int(np.prod(shape, dtype=np.int64))
        for i, v in enumerate(values):
            v.base, v.offset = s, i * n
        return s

    def layer(self, layer, name: str, **args):
        """Apply a derived layer (a built-in name or a `derive.define`d Derivation); returns its
        output value, or a tuple of them for a layer with several outputs."""
        d = derive.resolve(layer)
        known = {a.name for a in d.arguments}
        for a in args:
            if a not in known:
                raise GraphError(f"{self.name}: node '{name}': layer {d.name} has no argument '{a}' "
                                 f"(it takes {', '.join(sorted(known))})")
        for a in d.arguments:
            if a.role != "const" and a.name not in args:
                raise GraphError(f"{self.name}: node '{name}': argument '{a.name}' of {d.name} is not bound")
            v = args.get(a.name)
            if a.role != "const" and not isinstance(v, Value):
                raise GraphError(f"{self.name}: node '{name}': argument '{a.name}' must be a graph value")
            if isinstance(v, Value) and v.integer != a.integer:
                want = "integer" if a.integer else "floating"
                raise GraphError(f"{self.name}: node '{name}': argument '{a.name}' of {d.name} must be "
                                 f"{want}, got {v.name}")
        node = Node(name, d, dict(args))
        if any(n.name == name for n in self.nodes):
            raise GraphError(f"{self.name}: two nodes are named '{name}'")
        self.nodes.append(node)
        from .plan import node_shapes  # the shapes come from the compiled kernel's own checks
        for b, shape in node_shapes(node, self.dtype).items():
            node.outs[b] = self._new(Value(f"{name}.{b}", shape, "act", producer=node, binding=b))
        outs = tuple(node.outs[t.name] for t in d.outputs)
        return outs[0] if len(outs) == 1 else outs

    def loss(self, v: Value):
        """The scalar the backward differentiates."""
        if v.shape != ():
            raise GraphError(f"{self.name}: the loss must be a scalar, got {v.name} {v.shape}")
        self.loss_value = v
        self.results["loss"] = v
        return v

    def result(self, name: str, v: Value):
        """A value a forward call hands back (logits, a final recurrent state)."""
        self.results[name] = v
        return v


__all__ = ["ModelGraph", "ParamStore", "Value", "Node", "GraphError", "ALIGN", "normal"]
