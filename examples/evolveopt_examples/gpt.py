"""A small GPT trained byte-level on the Python standard library's own source files.

The text ships with Python (no download): the standard library's top-level ``*.py`` files in
sorted order, every ``heldout_every``-th file held out, so held-out text comes from modules the
model never saw. The task's version includes a digest of the bytes it trains on: Python's patch
releases change this text, and a cached result must not outlive it.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from evolveopt.tasks.module import ModuleTask

VOCAB = 256  # bytes


@lru_cache(maxsize=4)
def stdlib_text(heldout_every: int = 10) -> tuple[bytes, bytes]:
    """(train, held-out) bytes of the standard library's top-level modules, split by file."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    train, heldout = bytearray(), bytearray()
    for index, path in enumerate(files):
        (heldout if index % heldout_every == 0 else train).extend(path.read_bytes())
    return bytes(train), bytes(heldout)


def windows(text: bytes, context: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows: inputs ``[N, context]`` and the next bytes as targets."""
    ids = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    count = (len(ids) - 1) // context
    return ids[:count * context].view(count, context), ids[1:count * context + 1].view(count, context)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.register_buffer("future", torch.ones(context, context).triu(1).bool(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(width, -1))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(self.future[:length, :length], float("-inf"))
        y = scores.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, context)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token and position embeddings, pre-norm transformer blocks, a final norm and a linear head."""

    def __init__(self, layers: int = 2, width: int = 64, heads: int = 4, context: int = 64):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads, context) for _ in range(layers)))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, VOCAB)

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[-1], device=ids.device)
        return self.head(self.norm(self.blocks(self.tokens(ids) + self.positions(positions))))


def next_byte_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of the next byte (nats)."""
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def bits_per_byte(logits: Tensor, targets: Tensor) -> Tensor:
    return next_byte_loss(logits, targets) / math.log(2)


def gpt_stdlib(layers: int = 2, width: int = 64, heads: int = 4, context: int = 64, batch_size: int = 16,
               train_bytes: int = 1_000_000, heldout_bytes: int = 32_768) -> ModuleTask:
    train, heldout = stdlib_text()
    train, heldout = train[:train_bytes], heldout[:heldout_bytes]
    digest = hashlib.sha256(train + b"\0" + heldout).hexdigest()[:12]
    return ModuleTask("gpt_stdlib", lambda seed: GPT(layers, width, heads, context), windows(train, context),
                      next_byte_loss, batch_size=batch_size, heldout=windows(heldout, context),
                      metrics={"bits_per_byte": bits_per_byte}, version=f"1-{digest}")
