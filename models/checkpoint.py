"""Checkpoints: one `.npz` file holding config, parameters, optimizer state, RNG state and step.

Written atomically: to a temporary file in the same directory, flushed, then renamed over the
target, so a crash or Ctrl-C never leaves a half-written checkpoint. Read without pickle.
A checkpoint holding a NaN or an inf (a diverged run) is neither written nor read: the last
finite one stays the one on disk.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "symgrad-checkpoint-1"


class CheckpointError(ValueError):
    """A missing, unreadable or mismatched checkpoint."""


class NonFiniteError(CheckpointError):
    """A checkpoint would hold (or holds) a NaN or an inf."""


def _nonfinite(arrays: dict) -> str | None:
    """The name of the first float array that holds a NaN or an inf, or None."""
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            return name
    return None


def check_target(path):
    """CheckpointError now, not at the first save after hours of training, when `path` cannot be
    written: a folder on the way is a regular file, or the nearest existing one is read-only."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"cannot write checkpoint {path}: it is a folder")
    folder = path.parent
    while not folder.exists():  # False also under a regular file (ENOTDIR)
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"cannot write checkpoint {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write checkpoint {path}: {folder} is not writable")


def save(path, meta: dict, params: dict, opt_state: dict | None = None, extra: dict | None = None):
    """Write `path` atomically. meta: JSON-able dict; params: name -> array; opt_state: the
    optimizer's state_dict(); extra: name -> array (e.g. a recurrent model's carried state)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"param/{k}": v for k, v in params.items()}
    meta = dict(meta, format=FORMAT)
    if opt_state is not None:
        meta["opt_t"] = opt_state["t"]
        meta["opt_state"] = {s: len(b) for s, b in opt_state["state"].items()}
        for s, bufs in opt_state["state"].items():
            for i, b in enumerate(bufs):
                arrays[f"opt/{s}/{i}"] = b
    for k, v in (extra or {}).items():
        arrays[f"extra/{k}"] = v
    bad = _nonfinite(arrays)
    if bad is not None:
        raise NonFiniteError(f"refusing to write checkpoint {path}: {bad} holds NaN or inf")
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load(path) -> dict:
    """{"meta", "params", "opt_state" (or None), "extra"}; CheckpointError when unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.npz"
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"not a symgrad checkpoint: {path}")
    for key, kind in (("kind", str), ("config", dict), ("step", int)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"corrupt checkpoint {path}: its meta has no {key} "
                                  f"(a {kind.__name__})")
    bad = _nonfinite(arrays)
    if bad is not None:
        raise NonFiniteError(f"checkpoint {path} holds NaN or inf in {bad}: it is from a "
                             f"diverged run and cannot be used")
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    extra = {k[6:]: v for k, v in arrays.items() if k.startswith("extra/")}
    opt_state = None
    if "opt_state" in meta:
        try:
            opt_state = {"t": meta["opt_t"],
                         "state": {s: [arrays[f"opt/{s}/{i}"] for i in range(n)]
                                   for s, n in meta["opt_state"].items()}}
        except KeyError:
            raise CheckpointError(f"corrupt checkpoint {path}: optimizer state incomplete") from None
    return {"meta": meta, "params": params, "opt_state": opt_state, "extra": extra, "path": path}
