"""A fuzzer for the whole pipeline: random valid layer definitions through derive -> compile -> run.

    python -m tests.fuzz --budget 300            # fresh seeds until 300 s are spent
    python -m tests.fuzz --budget 60 --seed 7    # seeds 7, 8, 9, ... (a run is reproducible)
    python -m tests.fuzz --seed 1234 --one       # one case: its source, its verdict, a traceback
    python -m tests.fuzz --budget 300 --isolate  # each case in its own process (survives a segfault)

It has three parts, a module each:

1. **The generator** (`generate(seed)`, generator.py). A seed fully determines one *valid* layer definition,
   printed as the source of a `build(G)` function exactly as a user would write it (see
   tests/defined_layers.py), plus the sizes of its dims. A definition is 1-3 *steps*, each
   reading the layer's inputs or earlier bindings and adding one or more bindings:

   - elementwise compositions of tanh, sin, erf, exp, sigmoid, log of positive things,
     sqrt of positive things, powers, products, sums, quotients with safe denominators, and
     sometimes ReLU (`sp.Max(e, 0)`) or `sp.Abs`; a binding may broadcast over an axis it does
     not read (`h[i, j] = exp(w[j])`);
   - reductions: sums and means over an index, prefix (causal) sums `sum_{k<=i}`, a full sum to
     a scalar output;
   - max-subtracted normalisations: softmax and log-sum-exp with `G.max(..., stop_gradient=True)`
     (only s and lse are read afterwards: the exponentials and their sum depend on the max, and
     reading them elsewhere would make stop_gradient change the function's gradient), layernorm
     and rmsnorm with a saved positive `rstd`;
   - matrix products: a sum over an index shared by two tensors, square or not;
   - offset reads that stay in range: a window `y[i] = sum_k x[i + k] w[k]` with i over
     `W - K + 1`, a difference `x[i + 1] - x[i]` with i over `N - 1`; and, rarely and on
     purpose, one that does not (i over `N`): such a case is marked `invalid` and must be refused;
   - saved and unsaved intermediates (`save=True` at random); outputs: mostly every binding
     nothing else reads, sometimes also one that a later binding reads;
   - names that clash with the names a kernel uses (`g`, `dx`, `N`, `F`, `np`, `out`, `self`,
     `range`, ...) for inputs, parameters, bindings, dims, indices and constants.

   Values are bounded by construction (inputs in [-1.2, 1.2], positive inputs in [0.5, 2],
   every generated expression has an estimated bound it may not exceed) so that float64 finite
   differences are accurate to far better than the tolerance: a disagreement is a fault, not noise.

2. **The checker** (`check(case)`, checker.py). It derives the definition, compiles float64 kernels, and
   runs forward and backward on random inputs. The arrays it passes are views into buffers
   padded with NaN (and the outputs it passes are NaN before the call), so an out-of-bounds read
   or an unwritten output element shows up as a NaN. It compares
     - the compiled forward (every saved binding) with `derive.reference.forward`;
     - the compiled backward with float64 central differences of the reference forward
       (tests/gradcheck.py) and, when torch is importable, with torch.autograd on an
       evaluation of the same forward in torch (`torch_forward`: a small interpreter of the
       graph's SymPy bindings on torch tensors, independent of derive/reference.py).
   Each case gets one class:
     ok        everything agrees;
     refused   `derive.define` or `compiled.kernels` raised a DeriveError (allowed: a clear
               refusal naming the layer);
     crash     any other exception anywhere (a raw Numba, SymPy or Python error, a PrintError,
               a KernelError on a call built from the derivation's own arguments, a name clash that
               makes the kernels impossible to call, a time-out, a dead subprocess);
     disagree  a number differs beyond the tolerance (also: a gradient the backward does not
               return, a write into the padding, an invalid definition accepted).

3. **The CLI** (`main`, cli.py; `run` and `summary` too). It runs seeds until the budget is spent, then prints the counts per
   class, the time per definition (median, p99), the reasons for refusals, and for every crash
   or disagreement its seed and a one-line reason. The kernels go to a temporary cache
   directory (removed at the end) unless `SYMGRAD_CACHE_DIR` is set.
"""

from .checker import PAD, RTOL_FD, RTOL_FORWARD, RTOL_TORCH, Result, check, inputs_for, torch_forward
from .cli import KINDS, check_isolated, main, run, summary
from .generator import BOUND, CLASH_NAMES, Case, Generator, generate

__all__ = ["BOUND", "CLASH_NAMES", "Case", "Generator", "generate",
           "PAD", "RTOL_FD", "RTOL_FORWARD", "RTOL_TORCH", "Result", "check", "inputs_for", "torch_forward",
           "KINDS", "check_isolated", "main", "run", "summary"]
