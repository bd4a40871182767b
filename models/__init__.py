"""models: the JIT training API.

Layers hold NumPy parameters and call the kernels printed from derive/'s derivations (see
`models.kernels`); models compose them, running the layers' backward kernels in reverse order.
Optimizer update rules are SymPy definitions too (`models.rules`), printed into fused kernels.

    >>> import models
    >>> m = models.GPT(models.GPTConfig(), seed=0)
    >>> opt = models.AdamW(m.parameters(), lr=1e-3)
"""

from .gpt import GPT, GPTConfig
from .kernels import Op, kernels, profile
from .layers import CausalAttention, CrossEntropy, Elementwise, Embedding, LayerNorm, Linear, Softmax
from .module import Module, Param
from .optim import (SGD, AdaGrad, Adam, AdamW, Momentum, Nesterov, Optimizer, RMSprop, clip_grad_norm,
                    make_optimizer, OPTIMIZERS)
from .schedules import Constant, CosineWarmup, StepDecay, make_schedule

__all__ = ["GPT", "GPTConfig", "Op", "kernels", "profile", "CausalAttention", "CrossEntropy",
           "Elementwise", "Embedding", "LayerNorm", "Linear", "Softmax", "Module", "Param", "SGD",
           "AdaGrad", "Adam", "AdamW", "Momentum", "Nesterov", "Optimizer", "RMSprop", "clip_grad_norm",
           "make_optimizer", "OPTIMIZERS", "Constant", "CosineWarmup", "StepDecay", "make_schedule"]
