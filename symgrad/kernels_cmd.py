"""`symgrad kernels NAME [--dtype D] [--show]` and `symgrad bench kernels [--json]`.

`kernels` prints where a layer's generated kernel module lives (building it if needed) and, with
`--show`, its source. `bench kernels` (models/bench_kernels.py) times forward+backward of the
compiled kernels against PyTorch eager at the GPT reference shapes, each side in a process of its
own, in interleaved rounds (these machines change speed within seconds, so only a ratio
measured within one round means anything); it reports the median of the per-round ratios and
their spread.
"""

from __future__ import annotations

import argparse
import json
import sys

THREADS = 2


def kernels_main(argv) -> int:
    from symgrad import derive  # the help names the built-in layers (as `symgrad derive --help` does)

    p = argparse.ArgumentParser(prog="symgrad kernels",
                                description="Where a layer's compiled kernel lives; --show prints it.")
    p.add_argument("name", help=f"a built-in layer: {', '.join(derive.layers())}")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--show", action="store_true", help="print the generated source")
    a = p.parse_args(argv)
    from symgrad import compiled
    try:
        k = compiled.kernels(a.name, a.dtype)
    except (derive.DeriveError, compiled.KernelError) as e:
        print(f"symgrad kernels: {e}", file=sys.stderr)
        return 2
    if a.show:
        print(k.source, end="")
    else:
        print(k.source_path)
    return 0


# --- benchmark ------------------------------------------------------------------------------
def bench_main(argv) -> int:
    from symgrad.models import bench_kernels

    p = argparse.ArgumentParser(prog="symgrad bench kernels",
                                description="Forward+backward of the compiled kernels vs PyTorch eager "
                                            "(B=12, T=64, C=128, 4 heads, vocab 65; conv2d and max_pool2d at LeNet's "
                                            "first layer: 32 x 1 x 28 x 28, 6 filters 5x5, 2x2 pooling), each side in "
                                            "a process of its own, 2 threads each unless --threads.")
    p.add_argument("--json", action="store_true", help="print a JSON list of results")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--only", nargs="*", help=f"kernels to run (default: all): {', '.join(bench_kernels.NAMES)}")
    p.add_argument("--threads", type=int, default=THREADS,
                   help="threads for each side (1 gives stable ratios on a busy machine)")
    a = p.parse_args(argv)
    if a.threads < 1 or a.rounds < 1:
        p.error("--threads and --rounds must be at least 1")
    from symgrad.models.sides import SideError
    try:
        res = bench_kernels.run(a.rounds, only=a.only, threads=a.threads)
    except (ValueError, SideError) as e:  # an unknown kernel; a side that failed (torch not installed)
        print(f"symgrad bench kernels: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    layer = res[0]["threading_layer"] if res else "-"
    print(f"{'kernel':22s} {'symgrad ms':>11s} {'torch ms':>9s} {'speedup':>8s}  spread (min..max over "
          f"{a.rounds} interleaved rounds, {a.threads} thread{'s' if a.threads > 1 else ''} each, each side "
          f"in its own process; Numba threading layer {layer})")
    for r in res:
        print(f"{r['kernel']:22s} {r['symgrad_ms']:11.3f} {r['torch_ms']:9.3f} {r['speedup']:7.2f}x  "
              f"{r['speedup_min']:.2f}..{r['speedup_max']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(bench_main(sys.argv[1:]))
