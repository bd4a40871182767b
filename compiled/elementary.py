"""Vectorizable float32 elementary functions, printed into every float32 kernel that calls them.

Numba calls libm for `np.exp`, `np.tanh` and `math.erf` one element at a time when no vector math
library (SVML) is available, which is the case for llvmlite's PyPI wheels: a loop over 768 x 512
float32 took 6.2 ms for tanh and 5.9 ms for erf. The helpers below are written with arithmetic,
min/max and selects only, so LLVM vectorizes the loop they are inlined into (0.1 ms each, the
same loop). They are implementations of elementary functions, not gradients: every kernel body is
still printed from derive's expressions.

float64 kernels keep libm (`math.*`, `np.*`) for their 1e-12 agreement with derive's reference.

Each helper is source text, copied into the generated file that uses it (Numba's cache does not
see changes in other files a kernel calls, so a generated file must be self-contained). The
accuracy stated in each docstring is checked by `tests/compiled/test_elementary.py` on a dense
sweep against float64 libm; `MAX_REL_ERROR` is the bound that test asserts.
"""

from __future__ import annotations

import sympy as sp

# relative error bound (against float64 libm) over each helper's useful range, asserted by tests
MAX_REL_ERROR = {"exp32": 4e-7, "tanh32": 4e-7, "erf32": 4e-7}

_F32_FROM_BITS = '''
@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 `bits` (a register bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen
'''

_EXP32 = '''
@njit(inline="always", fastmath=FAST, error_model="numpy")
def exp32(x):
    """exp(x) in float32, vectorizable (Cephes expf).

    Cody-Waite reduction x = n*ln2 + r, |r| <= ln2/2 (ln2 split in two parts), a degree-7
    polynomial for exp(r), and 2^n built from its exponent bits (n = 128 as 2 * 2^127).
    Max relative error 3.0e-7 over [-87.3, 88.7]; exp(x) = inf above 88.7228 (as libm),
    0 below -87.3365 (where libm gives a subnormal), NaN stays NaN.
    """
    xc = min(max(x, F(-87.33654)), F(88.72284))
    n = np.floor(xc * F(1.4426950408889634) + F(0.5))
    r = xc - n * F(0.693359375)
    r = r - n * F(-2.12194440e-4)
    p = F(1.9875691500e-4)
    p = p * r + F(1.3981999507e-3)
    p = p * r + F(8.3334519073e-3)
    p = p * r + F(4.1665795894e-2)
    p = p * r + F(1.6666665459e-1)
    p = p * r + F(5.0000001201e-1)
    p = p * (r * r) + r + F(1)
    k = np.int32(n)
    p = p + p if k > np.int32(127) else p
    y = p * f32_from_bits((min(k, np.int32(127)) + np.int32(127)) << np.int32(23))
    y = F(0) if x < F(-87.33654) else y
    return y if x == x else x
'''

_TANH32 = '''
@njit(inline="always", fastmath=FAST, error_model="numpy")
def tanh32(x):
    """tanh(x) in float32, vectorizable (Eigen's generic_fast_tanh_float).

    x*P(x^2)/Q(x^2), a [13/6] rational approximation on |x| <= 7.905 (beyond it tanh rounds to
    +-1), and x itself for |x| < 4e-4. Max relative error 2.8e-7 over [-10, 10]; NaN stays NaN.
    """
    c = min(max(x, F(-7.90531110763549805)), F(7.90531110763549805))
    c2 = c * c
    p = F(-2.76076847742355e-16)
    p = p * c2 + F(2.00018790482477e-13)
    p = p * c2 + F(-8.60467152213735e-11)
    p = p * c2 + F(5.12229709037114e-08)
    p = p * c2 + F(1.48572235717979e-05)
    p = p * c2 + F(6.37261928875436e-04)
    p = p * c2 + F(4.89352455891786e-03)
    q = F(1.19825839466702e-06)
    q = q * c2 + F(1.18534705686654e-04)
    q = q * c2 + F(2.26843463243900e-03)
    q = q * c2 + F(4.89352518554385e-03)
    y = c * p / q
    y = c if abs(x) < F(0.0004) else y
    return y if x == x else x
'''

_ERF32 = '''
@njit(inline="always", fastmath=FAST, error_model="numpy")
def erf32(x):
    """erf(x) in float32, vectorizable (Eigen's generic_fast_erf_float).

    x*P(x^2)/Q(x^2), a [13/8] rational approximation on |x| <= 4 (beyond it erf rounds to
    +-1). Max relative error 3.8e-7 over [-5, 5]; NaN stays NaN.
    """
    c = min(max(x, F(-4.0)), F(4.0))
    c2 = c * c
    p = F(-2.72614225801306e-10)
    p = p * c2 + F(2.77068142495902e-08)
    p = p * c2 + F(-2.10102402082508e-06)
    p = p * c2 + F(-5.69250639462346e-05)
    p = p * c2 + F(-7.34990630326855e-04)
    p = p * c2 + F(-2.95459980854025e-03)
    p = p * c2 + F(-1.60960333262415e-02)
    q = F(-1.45660718464996e-05)
    q = q * c2 + F(-2.13374055278905e-04)
    q = q * c2 + F(-1.68282697438203e-03)
    q = q * c2 + F(-7.37332916720468e-03)
    q = q * c2 + F(-1.42647390514189e-02)
    y = c * p / q
    return y if x == x else x
'''

# name -> (source, helpers it calls)
HELPERS = {
    "f32_from_bits": (_F32_FROM_BITS, ()),
    "exp32": (_EXP32, ("f32_from_bits",)),
    "tanh32": (_TANH32, ()),
    "erf32": (_ERF32, ()),
}

# sympy function -> helper, for float32 kernels
FLOAT32_CALLS = {sp.exp: "exp32", sp.tanh: "tanh32", sp.erf: "erf32"}

IMPORTS = {"f32_from_bits": ["from llvmlite import ir", "from numba import types",
                             "from numba.extending import intrinsic"]}


def closure(used) -> list:
    """The helpers in `used` and those they call, callees first (definition order)."""
    out = []

    def visit(name):
        if name in out:
            return
        for dep in HELPERS[name][1]:
            visit(dep)
        out.append(name)

    for name in sorted(used):
        visit(name)
    return out


def imports(used) -> list:
    return sorted({line for name in closure(used) for line in IMPORTS.get(name, ())})


def source(used) -> str:
    """The source of the helpers in `used` (and their callees), ready to paste into a module
    that defines `F = np.float32`, `FAST`, and imports `np` and `njit`."""
    return "\n".join(HELPERS[name][0].strip("\n") + "\n\n" for name in closure(used))


__all__ = ["FLOAT32_CALLS", "HELPERS", "MAX_REL_ERROR", "closure", "imports", "source"]
