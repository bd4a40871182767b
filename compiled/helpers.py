"""The loop helpers a generated kernel may call (`maximum`, `pool_threads`), copied into its file:
Numba's cache sees only that file."""

# name -> (source, import lines)
HELPERS = {
    "maximum": ('''
@intrinsic
def maximum(typingctx, a, b):
    """max(a, b), NaN if either is NaN (IEEE-754 maximum, as np.max): llvm.maximum, which LLVM
    vectorizes as a reduction; Python's max is a compare-and-select it keeps scalar."""
    if a != b:
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maximum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)
    return a(a, b), codegen
''', ["from llvmlite import ir", "from numba.extending import intrinsic"]),
    "pool_threads": ('''
@intrinsic
def pool_threads(typingctx):
    """numba.get_num_threads(), read as Numba's own prange code reads it (a symbol of the
    threading layer): calling numba.get_num_threads here would stop the kernel from being
    cached. 1 after numba.set_num_threads(1): the serial copy of a loop runs, no thread pool."""
    def codegen(context, builder, signature, args):
        fn = builder.module.globals.get("get_num_threads") or \\
            ir.Function(builder.module, ir.FunctionType(ir.IntType(64), []), "get_num_threads")
        return builder.call(fn, [])
    return types.intp(), codegen
''', ["from llvmlite import ir", "from numba import types", "from numba.extending import intrinsic"]),
}


def helper_imports(used) -> list:
    return sorted({line for name in used for line in HELPERS[name][1]})


def helper_source(used) -> str:
    return "\n".join(HELPERS[name][0].strip("\n") + "\n\n" for name in sorted(used))
