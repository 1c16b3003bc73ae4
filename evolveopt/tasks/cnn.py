"""A small convolutional net on scikit-learn's 8×8 digits, trained as a stacked population.

    x ∈ ℝ^{1×8×8} → conv 3×3 (1→8, pad 1) → GroupNorm → ReLU
                  → conv 3×3 (8→16, stride 2, pad 1) → GroupNorm → ReLU → linear (256→10)

GroupNorm (Wu and He, ECCV 2018) with 4 groups and a learnable per-channel affine replaces
BatchNorm, so every statistic stays inside one member and one example. A stacked convolution is
im2col (3×3 patches) followed by one batched matrix product over the members; the input needs no
gradient, so the first layer's patches are cut once for the whole dataset.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from evolveopt.tasks.base import (
    Option, Task, epoch_orders, generator, linear_init, stack_members, stacked_linear,
)
from evolveopt.tasks.datasets import sklearn_classification, sklearn_digest
from evolveopt.tasks.mlp import ClassifierRun

IMAGE_SIZE = 8
KERNEL = 3
CHANNELS = (1, 8, 16)
STRIDES = (1, 2)
GROUPS = 4
CLASSES = 10


def conv_init(gen: torch.Generator, c_in: int, c_out: int) -> list[Tensor]:
    """Weight ``[c_in·k·k, c_out]`` (unfold's row order), bias, GroupNorm gain and shift."""
    fan_in = c_in * KERNEL * KERNEL
    return [linear_init(gen, fan_in, (fan_in, c_out)), linear_init(gen, fan_in, (c_out,)),
            torch.ones(c_out), torch.zeros(c_out)]


def cnn_init(gen: torch.Generator) -> list[Tensor]:
    tensors = []
    for c_in, c_out in zip(CHANNELS[:-1], CHANNELS[1:]):
        tensors += conv_init(gen, c_in, c_out)
    flat = CHANNELS[-1] * (IMAGE_SIZE // STRIDES[-1]) ** 2
    return tensors + [linear_init(gen, flat, (flat, CLASSES)), linear_init(gen, flat, (CLASSES,))]


def image_patches(images: Tensor, stride: int) -> Tensor:
    """3×3 patches, padding 1: images ``[N, C, H, W]`` → ``[N, H'·W', C·9]``."""
    return F.unfold(images, KERNEL, padding=1, stride=stride).transpose(1, 2)


def first_layer_patches(pixels: Tensor) -> Tensor:
    """Flattened images ``[N, 64]`` → their first-layer patches ``[N, 64, 9]``."""
    return image_patches(pixels.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE), STRIDES[0]).contiguous()


def conv_from_patches(patches: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """patches ``[P, B, L, C·9]`` @ weight ``[P, C·9, C_out]`` → feature maps ``[P, B, C_out, √L, √L]``."""
    members, batch, positions, _ = patches.shape
    out = stacked_linear(patches.reshape(members, batch * positions, -1), weight, bias)
    side = math.isqrt(positions)
    return out.view(members, batch, positions, -1).transpose(2, 3).reshape(members, batch, -1, side, side)


def group_norm(x: Tensor, gain: Tensor, shift: Tensor) -> Tensor:
    """GroupNorm with GROUPS groups over ``[P, B, C, H, W]``, affine gain/shift ``[P, C]``."""
    members, batch, channels = x.shape[:3]
    grouped = x.reshape(members, batch, GROUPS, -1)
    normed = F.layer_norm(grouped, grouped.shape[-1:]).view_as(x)
    return normed * gain.view(members, 1, channels, 1, 1) + shift.view(members, 1, channels, 1, 1)


def cnn_forward(params: list[Tensor], patches: Tensor) -> Tensor:
    """Logits ``[P, B, 10]`` from the images' first-layer patches ``[P, B, 64, 9]``."""
    w1, b1, gain1, shift1, w2, b2, gain2, shift2, w_head, b_head = params
    members, batch = patches.shape[:2]
    h = torch.relu(group_norm(conv_from_patches(patches, w1, b1), gain1, shift1))
    h = image_patches(h.reshape(members * batch, *h.shape[2:]), STRIDES[1])
    h = h.view(members, batch, *h.shape[1:])
    h = torch.relu(group_norm(conv_from_patches(h, w2, b2), gain2, shift2))
    return stacked_linear(h.reshape(members, batch, -1), w_head, b_head)


class DigitsCNN(Task):
    """Two conv layers with GroupNorm and a linear head on 8×8 digits (75/25 split)."""

    name = "digits_cnn"
    description = "conv(1-8)-GN-ReLU-conv(8-16,s2)-GN-ReLU-linear on 8x8 digits, batch 128"
    OPTIONS = {"batch_size": Option(128, (1, 4096), numeric=True, doc="examples per step")}

    def data_digest(self) -> str:
        return sklearn_digest("digits")

    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> ClassifierRun:
        x_train, y_train, x_test, y_test = (t.to(device) for t in sklearn_classification("digits"))
        x_train, x_test = first_layer_patches(x_train), first_layer_patches(x_test)
        params = stack_members([cnn_init(generator(s)) for s in seeds], device)
        orders = epoch_orders(seeds, len(x_train), device)
        return ClassifierRun(params, x_train, y_train, x_test, y_test, orders, self.options["batch_size"],
                             cnn_forward)

    def activation_bytes(self) -> int:
        unfolded = 9 * 64 + 72 * 16  # im2col columns per example
        feature_maps = 8 * 64 + 16 * 16
        return 4 * self.options["batch_size"] * (unfolded + 3 * feature_maps)
