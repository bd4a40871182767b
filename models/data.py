"""Data: tinyshakespeare (package data), character vocabularies and batches; spirals; a loader."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np


def tinyshakespeare_path() -> Path:
    """The shipped copy of Karpathy's char-rnn tinyshakespeare (public domain; see data/SOURCE.md)."""
    return Path(str(resources.files("symgrad.models") / "data" / "tinyshakespeare.txt"))


class DataError(ValueError):
    """Unusable training text (missing, empty, too short)."""


def read_text(path=None) -> str:
    path = tinyshakespeare_path() if path is None else Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"text file not found: {path}") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise DataError(f"cannot read text file {path}: {type(e).__name__}") from None


@dataclass
class CharVocab:
    chars: str

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        return cls("".join(sorted(set(text))))

    def __len__(self):
        return len(self.chars)

    def encode(self, s: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(s) - set(index))
        if unknown:
            raise DataError(f"characters not in the vocabulary: {''.join(unknown)!r}")
        return np.array([index[c] for c in s], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class CharData:
    """A text as character ids, split 90/10 into train and val; random windows by a seeded RNG."""

    def __init__(self, text: str, block_size: int, vocab: CharVocab | None = None, val_fraction=0.1):
        if not text:
            raise DataError("the text is empty")
        self.vocab = vocab or CharVocab.from_text(text)
        ids = self.vocab.encode(text)
        n = int(len(ids) * (1 - val_fraction))
        self.train, self.val = ids[:n], ids[n:]
        self.block_size = block_size
        need = block_size + 2
        if len(self.train) < need or len(self.val) < need:
            raise DataError(f"the text is too short: {len(text)} characters, need at least "
                            f"{int(need / min(val_fraction, 1 - val_fraction)) + 1} for block size {block_size} "
                            f"and a {int(100 * (1 - val_fraction))}/{int(100 * val_fraction)} split")

    def batch(self, split: str, batch_size: int, rng: np.random.Generator):
        """(x, y) of shape (batch_size, block_size): windows at random offsets, y shifted by one."""
        data = self.train if split == "train" else self.val
        ix = rng.integers(0, len(data) - self.block_size - 1, size=batch_size)
        x = np.stack([data[i:i + self.block_size] for i in ix])
        y = np.stack([data[i + 1:i + 1 + self.block_size] for i in ix])
        return x, y


def spirals(n_per_class=200, noise=0.2, turns=1.5, seed=0):
    """Two interleaved spirals in the plane: X (2n, 2) float, y (2n,) int in {0, 1}."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.05, 1, n_per_class)) * turns * 2 * np.pi
    xs, ys = [], []
    for c in (0, 1):
        phase = c * np.pi
        pts = np.stack([t * np.cos(t + phase), t * np.sin(t + phase)], 1) / (turns * 2 * np.pi)
        xs.append(pts * 3 + rng.normal(0, noise * 3 / (turns * 2 * np.pi), pts.shape))
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


class DataLoader:
    """Mini-batches of (X, y) in a shuffled order per epoch (batch_size=None: the whole set, batch GD)."""

    def __init__(self, X, y, batch_size=None, shuffle=True, seed=0):
        self.X, self.y = X, y
        self.batch_size = len(X) if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return -(-len(self.X) // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(len(self.X)) if self.shuffle else np.arange(len(self.X))
        for i in range(0, len(order), self.batch_size):
            j = order[i:i + self.batch_size]
            yield self.X[j], self.y[j]
