"""Hand-written stacked tasks written again as a user would, as ``nn.Module`` tasks (``ModuleTask``),
for ``evolveopt bench eval``: the digits MLP, and the char LM's transformer twice, once with torch's
``nn.TransformerEncoderLayer`` (scaled-dot-product attention, which ``vmap`` runs member by member on
CPU: torch has no batching rule for it) and once with attention written as matrix products.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from evolveopt.tasks.datasets import VOCAB_SIZE, pydoc_topics_text, sklearn_classification, split_text, text_ids
from evolveopt.tasks.module import ModuleTask

D_MODEL, HEADS, CONTEXT, BATCH = 32, 2, 32, 16  # char_lm's defaults


def digits_mlp() -> ModuleTask:
    x, y, x_test, y_test = sklearn_classification("digits")
    model = lambda seed: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))  # noqa: E731
    return ModuleTask("digits_mlp_module", model, (x, y), nn.functional.cross_entropy, batch_size=128,
                      heldout=(x_test, y_test))


class MatmulAttention(nn.Module):
    """Causal multi-head self-attention as softmax(QKᵀ/√d + mask)V with plain matrix products."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(D_MODEL, 3 * D_MODEL), nn.Linear(D_MODEL, D_MODEL)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CONTEXT), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        heads = self.qkv(x).view(batch, length, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        scores = heads[0] @ heads[1].transpose(-2, -1) / math.sqrt(heads.shape[-1]) + self.mask
        return self.out((scores.softmax(-1) @ heads[2]).transpose(1, 2).reshape(batch, length, D_MODEL))


class CharTransformer(nn.Module):
    """char_lm's model: embeddings, one pre-LayerNorm block (attention, 4x GELU MLP), a final norm and head."""

    def __init__(self, attention: str):
        super().__init__()
        self.embed, self.position = nn.Embedding(VOCAB_SIZE, D_MODEL), nn.Parameter(torch.randn(CONTEXT, D_MODEL) * .02)
        if attention == "sdpa":
            self.block = nn.TransformerEncoderLayer(D_MODEL, HEADS, 4 * D_MODEL, dropout=0.0, activation="gelu",
                                                    batch_first=True, norm_first=True)
        else:
            self.norm1, self.attention, self.norm2 = nn.LayerNorm(D_MODEL), MatmulAttention(), nn.LayerNorm(D_MODEL)
            self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL))
        self.norm, self.head = nn.LayerNorm(D_MODEL), nn.Linear(D_MODEL, VOCAB_SIZE)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CONTEXT), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids) + self.position
        if hasattr(self, "block"):
            x = self.block(x, src_mask=self.mask, is_causal=True)
        else:
            x = x + self.attention(self.norm1(x))
            x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x))


def char_lm(attention: str) -> ModuleTask:
    """Non-overlapping windows of char_lm's training text; ``attention``: "sdpa" or "matmul"."""
    train, _ = split_text(text_ids(pydoc_topics_text()))
    count = (len(train) - 1) // CONTEXT
    windows = train[:count * CONTEXT].view(count, CONTEXT), train[1:count * CONTEXT + 1].view(count, CONTEXT)
    return ModuleTask(f"char_lm_module_{attention}", lambda seed: CharTransformer(attention), windows,
                      lambda logits, targets: nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE),
                                                                          targets.reshape(-1)), batch_size=BATCH)
