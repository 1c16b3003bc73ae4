"""A small GPT trained byte-level on the Python standard library's own source files, as a user's task.

This is how a user turns their own ``nn.Module``, data and loss into a task: one factory that
returns a :class:`~evolveopt.tasks.module.ModuleTask`. The model and the text are evolveopt's
built-in ``gpt`` task's (``evolveopt/tasks/gpt.py``: the ``GPT`` module, the standard library's
files split by file, every 10th held out), so the example and the suites train the same thing.
The task's version includes a digest of the bytes it trains on: Python's releases change this
text, and a cached result must not outlive it.
"""

from __future__ import annotations

import hashlib

from evolveopt.tasks.gpt import GPT, bits_per_byte, next_byte_loss, stdlib_text, windows
from evolveopt.tasks.module import ModuleTask

MODEL_VERSION = 2  # 2: the query/key/value projection has no bias


def gpt_stdlib(layers: int = 2, width: int = 64, heads: int = 4, context: int = 64, batch_size: int = 16,
               train_bytes: int = 1_000_000, heldout_bytes: int = 32_768) -> ModuleTask:
    train, heldout = stdlib_text()
    train, heldout = train[:train_bytes], heldout[:heldout_bytes]
    digest = hashlib.sha256(train + b"\0" + heldout).hexdigest()[:12]
    return ModuleTask("gpt_stdlib", lambda seed: GPT(layers, width, heads, context), windows(train, context),
                      next_byte_loss, batch_size=batch_size, heldout=windows(heldout, context),
                      metrics={"bits_per_byte": bits_per_byte}, version=f"{MODEL_VERSION}-{digest}")
