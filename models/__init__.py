"""models: the JIT training API.

A model is a graph of derived layers declared forward only (`models.graph.ModelGraph`); symgrad
plans its training step (`models.plan`: buffers allocated once, the backward and the sums where
a value is used twice read off the graph) and prints it into a real file in the kernel cache
(`models.step`): straight calls of the layers' printed kernels. Parameters are views of one flat
buffer; optimizer update rules are SymPy definitions too (`models.rules`), printed into one
fused kernel that updates that whole buffer at once.

    >>> from symgrad import models
    >>> m = models.GPT(models.GPTConfig(), seed=0)
    >>> opt = models.AdamW(m.parameters(), lr=1e-3)
    >>> m.zero_grad(); _, loss = m(x, y); m.backward(); opt.step()
"""

from .gpt import GPT, GPTConfig, gpt_graph
from .graph import GraphError, ModelGraph, ParamStore
from .module import GraphModel, Module, Param
from .optim import (SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, Optimizer, RMSprop, clip_grad_norm,
                    make_optimizer, OPTIMIZERS)
from .profile import profile
from .schedules import Constant, CosineWarmup, StepDecay, make_schedule
from .step import Step

__all__ = ["GPT", "GPTConfig", "gpt_graph", "GraphError", "ModelGraph", "ParamStore", "GraphModel", "Module",
           "Param", "Step", "profile", "SGD", "AdaGrad", "Adam", "AdamW", "Momentum", "Nesterov", "Optimizer",
           "RMSprop", "clip_grad_norm", "make_optimizer", "OPTIMIZERS", "Constant", "CosineWarmup", "StepDecay",
           "make_schedule"]
