"""A small CNN with BatchNorm on scikit-learn's 8×8 digits, as a user would write it."""

from __future__ import annotations

from torch import Tensor, nn

from evolveopt.tasks.datasets import sklearn_classification
from evolveopt.tasks.module import ModuleTask


def cnn(channels: int) -> nn.Module:
    """conv-BN-ReLU twice (no conv bias: BatchNorm removes it), global average pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False), nn.BatchNorm2d(2 * channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * channels, 10),
    )


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).float().mean()


def digits_cnn_bn(channels: int = 8, batch_size: int = 64) -> ModuleTask:
    x_train, y_train, x_test, y_test = sklearn_classification("digits")
    images = lambda x: x.view(-1, 1, 8, 8)  # noqa: E731
    return ModuleTask("digits_cnn_bn", lambda seed: cnn(channels), (images(x_train), y_train),
                      nn.functional.cross_entropy, batch_size=batch_size, heldout=(images(x_test), y_test),
                      metrics={"accuracy": accuracy}, version="1")
