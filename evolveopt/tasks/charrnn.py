"""Character-level recurrent language model on Python source code (a held-out task family).

Data: the source of a few standard-library modules (argparse, textwrap, json.decoder, string),
read from disk at run time, mapped to ids like ``char_lm``; the last 10% is held out. Model: an
Elman network (Elman, "Finding structure in time", Cognitive Science 1990) with one-hot inputs,
so W_x x is a row of W_x:

    h_t = tanh(W_x x_t + W_h h_{t−1} + b),   h_0 = 0,   logits_t = W_o h_t + b_o

with every weight U(−1/√H, 1/√H) as ``torch.nn.RNN``. Backpropagation through 32 tanh steps
gives the exploding and vanishing gradients that recurrent nets are known for. Windows, loss
(nats per character) and the held-out metric follow ``char_lm``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evolveopt.tasks.base import (
    Option, Task, TaskRun, generator, linear_init, stack_members, stacked_embedding, stacked_linear,
)
from evolveopt.tasks.charlm import HELDOUT_WINDOWS, fixed_windows, next_token_loss, sample_windows
from evolveopt.tasks.datasets import VOCAB_SIZE, split_text, stdlib_source_text, text_digest, text_ids
from evolveopt.tasks.noise import seed_tensor

SOURCE_MODULES = ("argparse", "textwrap", "json.decoder", "string")


def rnn_init(gen: torch.Generator, hidden: int) -> list[Tensor]:
    """Input weights ``[V, H]``, recurrent weights ``[H, H]``, bias ``[H]``, head ``[H, V]`` and bias."""
    shapes = [(VOCAB_SIZE, hidden), (hidden, hidden), (hidden,), (hidden, VOCAB_SIZE), (VOCAB_SIZE,)]
    return [linear_init(gen, hidden, shape) for shape in shapes]


def rnn_forward(params: list[Tensor], tokens: Tensor) -> Tensor:
    """Logits ``[P, B·T, V]`` of tokens ``[P, B, T]``."""
    w_input, w_hidden, bias, w_out, b_out = params
    members, batch, length = tokens.shape
    inputs = stacked_embedding(w_input, tokens) + bias[:, None, None]
    h = inputs.new_zeros(members, batch, w_hidden.shape[1])
    states = []
    for x_t in inputs.unbind(2):  # unbind: one gradient stack, not a zero-filled buffer per step
        h = torch.tanh(torch.baddbmm(x_t, h, w_hidden))
        states.append(h)
    return stacked_linear(torch.stack(states, 2).reshape(members, batch * length, -1), w_out, b_out)


class CharRNNRun(TaskRun):
    def __init__(self, params: list[Tensor], seeds: Tensor, train_ids: Tensor, heldout: Tensor,
                 batch_size: int, context: int):
        self.params, self.seeds, self.train_ids = params, seeds, train_ids
        self.heldout_windows = heldout.expand(len(seeds), *heldout.shape[1:])
        self.batch_size, self.context = batch_size, context

    def loss(self, step: int) -> Tensor:
        windows = sample_windows(self.train_ids, self.seeds, step, self.batch_size, self.context)
        return next_token_loss(rnn_forward(self.params, windows[:, :, :-1]), windows)

    @torch.no_grad()
    def heldout(self) -> dict[str, Tensor]:
        return {"loss": next_token_loss(rnn_forward(self.params, self.heldout_windows[:, :, :-1]),
                                        self.heldout_windows)}


class CharRNN(Task):
    """Elman RNN character model on standard-library source code, nats per character."""

    name = "char_rnn"
    description = "character tanh RNN (hidden 64, context 32) on stdlib source (argparse, textwrap, ...), batch 16"
    OPTIONS = {
        "hidden": Option(64, (8, 2048), numeric=True, doc="recurrent state size"),
        "context": Option(32, (2, 1024), numeric=True, doc="characters per window"),
        "batch_size": Option(16, (1, 4096), numeric=True, doc="windows per step"),
    }

    def text(self) -> str:
        """The text it models (a subclass may model another)."""
        return stdlib_source_text(SOURCE_MODULES)

    def data_digest(self) -> str:
        return text_digest(self.text())

    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> CharRNNRun:
        o = self.options
        train, heldout = (t.to(device) for t in split_text(text_ids(self.text())))
        params = stack_members([rnn_init(generator(s), o["hidden"]) for s in seeds], device)
        heldout_windows = fixed_windows(heldout, HELDOUT_WINDOWS, o["context"])
        return CharRNNRun(params, seed_tensor(seeds, device), train, heldout_windows, o["batch_size"], o["context"])

    def activation_bytes(self) -> int:
        o = self.options
        return 4 * o["batch_size"] * o["context"] * (3 * o["hidden"] + 2 * VOCAB_SIZE)
