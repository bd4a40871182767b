"""A side for tests/models/test_bench.py's test of models.sides: built in its own process."""

import os

import numpy as np

from symgrad.models.sides import memory_growth, memory_mark


def calls(mib):
    memory_mark()
    held = []

    def grow():  # mib MiB more, touched, kept
        held.append(np.ones(mib * 1024 * 1024 // 8))

    return {"pid": os.getpid, "grow": grow, "memory": memory_growth, "fail": lambda: 1 / 0}
