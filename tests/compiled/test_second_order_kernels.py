"""The compiled JVP and HVP kernels (compiled.second_order) against torch.autograd, float64 within
1e-10 and float32 within 2e-5 (relative), for a tangent on each argument alone.

Every kernel compiles cold in this session's cache (a few seconds each), so the default run
covers a representative set: an elementwise layer, a loss, a normalisation, attention (its
softmax the reduction), a test-only layer and a matrixcalculus.org example (contractions). SYMGRAD_SECOND_ORDER_ALL=1
runs every built-in and test-only layer (what the derive-level test does through the reference
evaluator on every run)."""

import os

import numpy as np
import pytest

from symgrad import derive
from symgrad.compiled import KernelError
from symgrad.compiled.second_order import second_order_kernels
from symgrad.derive import reference
from tests.gradcheck import assert_close, torch_or_skip
from tests import second_order_cases as soc

SUBSET = ["tanh", "cross_entropy", "layernorm", "attention", "t_rmsnorm", "mc_lowrank"]  # softmax: in attention
NAMES = soc.NAMES if os.environ.get("SYMGRAD_SECOND_ORDER_ALL") else SUBSET
TOL = {"float64": 1e-10, "float32": 2e-5}


def _cast(d, values, dtype):
    return {k: v if (k in d.graph.tensors() and d.graph.tensor(k).integer) or not isinstance(v, np.ndarray)
            or v.dtype.kind in "iu" else v.astype(dtype) for k, v in values.items()}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_hvp_kernel_matches_torch_double_backward_for_every_argument_pair(name, dtype):
    torch_or_skip()
    d = soc.layer(name)
    k = second_order_kernels(d, dtype)
    for label, args in soc.cases(name)[:2]:
        tangents, ups = soc.directions(d, args, reference.forward(d, args))
        for b in soc.differentiable(d):
            v = soc.only(tangents, b)
            jvp, hv = k.jvp_and_hvp(_cast(d, args, dtype), _cast(d, v, dtype), _cast(d, ups, dtype))
            want_jvp, want_hv = soc.torch_jvp_hvp(name, d, args, v, ups)
            for o, want in want_jvp.items():
                assert_close(name, f"{o}_dot ({dtype} kernel, tangent on {b})", jvp[o], want, TOL[dtype],
                             f"torch.func.jvp ({label})")
            for a, want in want_hv.items():
                assert_close(name, f"{a} H v ({dtype} kernel, tangent on {b})", hv[a], want, TOL[dtype],
                             f"double backward ({label})")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["softmax", "cross_entropy"])
def test_jvp_kernel_matches_torch_func_jvp(name, dtype):
    torch_or_skip()
    d = soc.layer(name)
    k = second_order_kernels(d, dtype)
    label, args = soc.cases(name)[0]
    tangents, ups = soc.directions(d, args, reference.forward(d, args))
    outs, jvp = k.jvp(_cast(d, args, dtype), _cast(d, tangents, dtype))
    want_jvp, _ = soc.torch_jvp_hvp(name, d, args, tangents, ups)
    ref = reference.forward(d, args)
    for o, want in want_jvp.items():
        assert_close(name, f"{o}_dot ({dtype} JVP kernel)", jvp[o], want, TOL[dtype], f"torch.func.jvp ({label})")
        assert_close(name, f"{o} ({dtype} JVP kernel)", outs[o], ref[o], TOL[dtype], "the reference forward")


def test_kernels_are_cached_files_that_quote_the_derivation(kernel_cache):
    # softmax's definition under a name of this test's own: a test that ran before in this
    # process may have loaded softmax's kernels from another cache
    from symgrad.derive.builtin.softmax import softmax

    d = derive.define("softmax_cache_probe", softmax)
    k = second_order_kernels(d, "float64")
    assert second_order_kernels(d, "float64") is k
    for path in k.source_paths:
        assert path.startswith(str(kernel_cache))
    src = open(k.hvp_kernels.source_path).read()
    assert "def softmax_cache_probe_hvp_forward(" in src and "dx_dot[i, j] = " in src
    assert "prange" not in src  # serial: compiled.second_order.PARALLEL
    assert "def softmax_cache_probe_jvp_forward(" in open(k.jvp_kernels.source_path).read()


def test_a_missing_tangent_is_zero_and_a_wrong_one_is_refused():
    k = second_order_kernels("tanh", "float64")
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    assert not np.any(k.hvp({"x": x}, {}, {"g": np.ones_like(x)})["x"])
    with pytest.raises(KernelError, match="no tangent for 'W'"):
        k.jvp({"x": x}, {"W": x})
    with pytest.raises(KernelError, match="dtype float32"):
        k.jvp({"x": x}, {"x": x.astype(np.float32)})
