"""The `symgrad` command: one subcommand per capability, each implemented in its own module.

Bad input prints one line on stderr and exits 2; no traceback reaches the user.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function); "bench" dispatches on its first argument.
COMMANDS = {
    "derive": ("symgrad.derive_cmd", "main"),
    "kernels": ("symgrad.kernels_cmd", "kernels_main"),
    "verify": ("symgrad.verify_cmd", "main"),
    "train": ("symgrad.train_cmd", "train_main"),
    "sample": ("symgrad.train_cmd", "sample_main"),
    "docs": ("symgrad.docs_cmd", "main"),
}
BENCH = {"kernels": ("symgrad.kernels_cmd", "bench_main"), "train": ("symgrad.train_cmd", "bench_main"),
         "hvp": ("symgrad.second_order_cmd", "bench_hvp_main"),
         "newton": ("symgrad.second_order_cmd", "bench_newton_main")}

USAGE = """usage: symgrad COMMAND [...]
  derive NAME [--format text|latex|json]   the derivation of a layer
  kernels NAME [--dtype D] [--show]        where a layer's compiled kernel lives, its source
  verify FILE.py:FUNC --layer L --wrt ARG  check a hand-derived gradient
  train gpt|mlp|rnn|lstm|word2vec [...]    train a model
  sample CHECKPOINT [...]                  sample from a trained model
  bench kernels|train|hvp [--json]         speed against PyTorch, measured in the same run
  bench newton [--json]                    Newton-CG against Adam and L-BFGS (logistic regression)
  docs build|serve                         the derivation site"""


def _resolve(argv):
    if not argv or argv[0] in ("-h", "--help"):
        return None, argv
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        if not rest or rest[0] not in BENCH:
            raise SystemExit(f"symgrad bench: choose one of {', '.join(BENCH)}")
        return BENCH[rest[0]], rest[1:]
    if cmd not in COMMANDS:
        raise SystemExit(f"symgrad: unknown command '{cmd}'; one of {', '.join(list(COMMANDS) + ['bench'])}")
    return COMMANDS[cmd], rest


def main(argv=None) -> int:
    from symgrad.derive.errors import DeriveError

    argv = sys.argv[1:] if argv is None else argv
    try:
        target, rest = _resolve(argv)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    if target is None:
        print(USAGE)
        return 0
    module, func = target
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        print(f"symgrad {argv[0]}: not available in this build ({e})", file=sys.stderr)
        return 2
    try:
        return int(fn(rest) or 0)
    except DeriveError as e:
        print(f"symgrad {argv[0]}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse errors already printed their one line
        return e.code if isinstance(e.code, int) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `symgrad derive x | head`: the reader left; that is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
