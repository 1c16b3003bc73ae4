"""Data that ships with installed packages: scikit-learn's bundled sets and Python's own text."""

from __future__ import annotations

import hashlib
from functools import lru_cache

from evolveopt.extras import optional

import torch
from torch import Tensor

HELDOUT_FRACTION = 0.25


@lru_cache(maxsize=None)
def sklearn_classification(name: str, split_seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardized features and labels, split 75/25 into train and held-out (fixed seed).

    ``name``: digits (1,797 × 64, 10 classes), breast_cancer (569 × 30, 2), wine (178 × 13, 3).
    """
    datasets = optional("sklearn.datasets", "search")

    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
              "wine": datasets.load_wine}[name]
    data = loader()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    x, y = x[order], y[order]
    n_test = int(round(len(x) * HELDOUT_FRACTION))
    mean, std = x[:-n_test].mean(0), x[:-n_test].std(0) + 1e-6
    x = (x - mean) / std
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]


# ----------------------------------------------------------------------------- text

CHARSET = "\n" + "".join(chr(c) for c in range(32, 127))  # newline and printable ASCII
UNKNOWN_ID = len(CHARSET)  # every other character
VOCAB_SIZE = len(CHARSET) + 1
_CHAR_IDS = {c: i for i, c in enumerate(CHARSET)}


def encode_text(text: str) -> Tensor:
    """Character ids ``[len(text)]`` (int64): CHARSET positions, UNKNOWN_ID for the rest."""
    return torch.tensor([_CHAR_IDS.get(c, UNKNOWN_ID) for c in text], dtype=torch.long)


def split_text(ids: Tensor, heldout_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """(train, held-out): the held-out part is the last ``heldout_fraction`` of the text."""
    cut = int(len(ids) * (1 - heldout_fraction))
    return ids[:cut], ids[cut:]


@lru_cache(maxsize=8)
def text_ids(text: str) -> Tensor:
    """:func:`encode_text`, once per text."""
    return encode_text(text)


@lru_cache(maxsize=8)
def text_digest(text: str) -> str:
    """sha256 of the text's UTF-8 bytes: what a result of a task trained on it depends on."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tensors_digest(tensors: tuple[Tensor, ...]) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=None)
def sklearn_digest(name: str) -> str:
    """:func:`tensors_digest` of :func:`sklearn_classification` (the data ships with scikit-learn)."""
    return tensors_digest(sklearn_classification(name))


@lru_cache(maxsize=None)
def pydoc_topics_text() -> str:
    """English prose: the values of ``pydoc_data.topics.topics`` joined (~465k characters).

    It changes with the Python release (patch releases included), hence :func:`text_digest`.
    """
    from pydoc_data.topics import topics

    return "".join(topics.values())


@lru_cache(maxsize=None)
def stdlib_source_text(modules: tuple[str, ...]) -> str:
    """Python source: the standard-library ``modules``' source files, read from disk and joined."""
    import importlib
    import inspect

    return "".join(inspect.getsource(importlib.import_module(m)) for m in modules)
