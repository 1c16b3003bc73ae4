"""Character-level transformer language model on Python's own documentation text.

Data: the values of ``pydoc_data.topics.topics`` joined (~465k characters of English that ships
with CPython), mapped to 97 ids (newline, printable ASCII, one unknown id); the last 10% is held
out. Model: a decoder-only transformer (Vaswani et al. 2017) with pre-LayerNorm blocks as in
GPT-2 (Radford et al. 2019), GPT-2 initialization (N(0, 0.02) weights, zero biases):

    x = E[c] + P[pos];   x += Attn(LN(x));   x += W₂ GELU(W₁ LN(x));   logits = LN(x) Wₒ

with causal multi-head self-attention. Each step a member reads ``batch_size`` windows of
``context + 1`` characters at offsets drawn from its own seed (counter-based); the loss is the
mean next-character cross-entropy in nats per character. Held-out: the same 64 evenly spaced
windows of the held-out text for every member.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from evolveopt.tasks.base import (
    Option, Task, TaskError, TaskRun, cross_entropy_per_member, generator, stack_members, stacked_embedding,
    stacked_linear,
)
from evolveopt.tasks.datasets import VOCAB_SIZE, pydoc_topics_text, split_text, text_digest, text_ids
from evolveopt.tasks.noise import member_randint, seed_tensor

HELDOUT_WINDOWS = 64
INIT_STD = 0.02
BLOCK_TENSORS = 12  # per block: LN gain/shift, qkv weight/bias, out weight/bias, LN gain/shift, MLP 2×(weight, bias)


# ----------------------------------------------------------------------------- data


def sample_windows(ids: Tensor, seeds: Tensor, step: int, batch_size: int, context: int) -> Tensor:
    """``[P, batch, context + 1]`` windows of ``ids`` at per-member offsets for ``step``."""
    starts = member_randint(seeds, step, (batch_size,), len(ids) - context)
    return ids[starts.unsqueeze(-1) + torch.arange(context + 1, device=ids.device)]


def fixed_windows(ids: Tensor, count: int, context: int) -> Tensor:
    """``[1, count, context + 1]`` evenly spaced windows, the same for every member."""
    starts = torch.linspace(0, len(ids) - context - 1, count, device=ids.device).long()
    return ids[starts.unsqueeze(-1) + torch.arange(context + 1, device=ids.device)].unsqueeze(0)


def next_token_loss(logits: Tensor, windows: Tensor) -> Tensor:
    """``[P]`` mean cross-entropy of logits ``[P, B·T, V]`` against the windows' next characters."""
    return cross_entropy_per_member(logits, windows[:, :, 1:].reshape(windows.shape[0], -1))


# ----------------------------------------------------------------------------- model


def transformer_init(gen: torch.Generator, d_model: int, layers: int, context: int) -> list[Tensor]:
    """Embeddings, ``layers`` blocks of BLOCK_TENSORS tensors, final LayerNorm and output head."""
    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen) * INIT_STD

    d, zeros, ones = d_model, torch.zeros, torch.ones
    tensors = [normal(VOCAB_SIZE, d), normal(context, d)]
    for _ in range(layers):
        tensors += [ones(d), zeros(d), normal(d, 3 * d), zeros(3 * d), normal(d, d), zeros(d),
                    ones(d), zeros(d), normal(d, 4 * d), zeros(4 * d), normal(4 * d, d), zeros(d)]
    return tensors + [ones(d), zeros(d), normal(d, VOCAB_SIZE), zeros(VOCAB_SIZE)]


def layer_norm(x: Tensor, gain: Tensor, shift: Tensor) -> Tensor:
    """LayerNorm over the last dim of x ``[P, ..., d]`` with per-member gain/shift ``[P, d]``."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:]) * gain.view(shape) + shift.view(shape)


def causal_self_attention(x: Tensor, w_qkv: Tensor, b_qkv: Tensor, w_out: Tensor, b_out: Tensor,
                          heads: int) -> Tensor:
    """softmax(QKᵀ/√d_head + causal mask) V over x ``[P, B, T, d]``, heads side by side."""
    members, batch, length, width = x.shape
    head_dim = width // heads
    qkv = stacked_linear(x.reshape(members, batch * length, width), w_qkv, b_qkv)
    q, k, v = (qkv.view(members, batch, length, 3, heads, head_dim).permute(3, 0, 1, 4, 2, 5)
               .reshape(3, members * batch * heads, length, head_dim))
    mask = torch.full((length, length), -math.inf, device=x.device).triu(1)
    scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=1 / math.sqrt(head_dim))
    out = torch.bmm(scores.softmax(-1), v).view(members, batch, heads, length, head_dim)
    out = out.transpose(2, 3).reshape(members, batch * length, width)
    return stacked_linear(out, w_out, b_out).view_as(x)


def mlp_block(x: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    members, batch, length, width = x.shape
    hidden = F.gelu(stacked_linear(x.reshape(members, batch * length, width), w_in, b_in))
    return stacked_linear(hidden, w_out, b_out).view_as(x)


def transformer_forward(params: list[Tensor], tokens: Tensor, heads: int) -> Tensor:
    """Logits ``[P, B·T, V]`` of tokens ``[P, B, T]``."""
    embed, positions, *blocks, final_gain, final_shift, w_head, b_head = params
    members, batch, length = tokens.shape
    x = stacked_embedding(embed, tokens) + positions[:, None, :length]
    for i in range(0, len(blocks), BLOCK_TENSORS):
        ln1_g, ln1_b, w_qkv, b_qkv, w_o, b_o, ln2_g, ln2_b, w_1, b_1, w_2, b_2 = blocks[i:i + BLOCK_TENSORS]
        x = x + causal_self_attention(layer_norm(x, ln1_g, ln1_b), w_qkv, b_qkv, w_o, b_o, heads)
        x = x + mlp_block(layer_norm(x, ln2_g, ln2_b), w_1, b_1, w_2, b_2)
    x = layer_norm(x, final_gain, final_shift).reshape(members, batch * length, -1)
    return stacked_linear(x, w_head, b_head)


# ----------------------------------------------------------------------------- task


class CharLMRun(TaskRun):
    def __init__(self, params: list[Tensor], seeds: Tensor, train_ids: Tensor, heldout: Tensor,
                 batch_size: int, context: int, heads: int):
        self.params, self.seeds, self.train_ids = params, seeds, train_ids
        self.heldout_windows = heldout.expand(len(seeds), *heldout.shape[1:])
        self.batch_size, self.context, self.heads = batch_size, context, heads

    def loss(self, step: int) -> Tensor:
        windows = sample_windows(self.train_ids, self.seeds, step, self.batch_size, self.context)
        return next_token_loss(transformer_forward(self.params, windows[:, :, :-1], self.heads), windows)

    @torch.no_grad()
    def heldout(self) -> dict[str, Tensor]:
        logits = transformer_forward(self.params, self.heldout_windows[:, :, :-1], self.heads)
        return {"loss": next_token_loss(logits, self.heldout_windows)}


class CharLM(Task):
    """Tiny pre-LN transformer on ``pydoc_data.topics`` text, nats per character."""

    name = "char_lm"
    description = "character transformer (1 block, d=32, 2 heads, context 32) on pydoc_data.topics, batch 16"
    OPTIONS = {
        "d_model": Option(32, (8, 1024), numeric=True, doc="residual width"),
        "heads": Option(2, (1, 16), numeric=True, doc="attention heads (must divide d_model)"),
        "layers": Option(1, (1, 12), numeric=True, doc="transformer blocks"),
        "context": Option(32, (2, 1024), numeric=True, doc="characters per window"),
        "batch_size": Option(16, (1, 4096), numeric=True, doc="windows per step"),
    }

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options["d_model"] % self.options["heads"]:
            raise TaskError(f"task '{self.name}': option heads={self.options['heads']} must divide "
                            f"d_model={self.options['d_model']}")

    def text(self) -> str:
        """The text it models (a subclass may model another)."""
        return pydoc_topics_text()

    def data_digest(self) -> str:
        return text_digest(self.text())

    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> CharLMRun:
        o = self.options
        train, heldout = (t.to(device) for t in split_text(text_ids(self.text())))
        params = stack_members([transformer_init(generator(s), o["d_model"], o["layers"], o["context"])
                                for s in seeds], device)
        heldout_windows = fixed_windows(heldout, HELDOUT_WINDOWS, o["context"])
        return CharLMRun(params, seed_tensor(seeds, device), train, heldout_windows, o["batch_size"], o["context"],
                         o["heads"])

    def activation_bytes(self) -> int:
        o = self.options
        tokens = o["batch_size"] * o["context"]
        per_block = 12 * o["d_model"] + 2 * o["heads"] * o["context"]  # LN, qkv, out, MLP; scores, probs
        return 4 * tokens * (o["layers"] * per_block + 2 * o["d_model"] + 2 * VOCAB_SIZE)
