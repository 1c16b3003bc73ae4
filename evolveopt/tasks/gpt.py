"""A small GPT trained byte-level on the Python standard library's own source files.

Data: the files of :data:`STDLIB_FILES` (a fixed, sorted list of top-level pure-Python modules
that CPython 3.11, 3.12 and 3.13 all ship; no download, and nothing machine-specific such as
``_sysconfigdata_*.py``), read as bytes in that order. Every ``heldout_every``-th file (the 0th,
10th, ...) is held out, so held-out text comes from modules the model never saw; the training
text is the first ``train_bytes`` bytes of the other files joined, the held-out text the first
``heldout_bytes`` of the held-out files. The suites' figures were measured on CPython 3.11.7's
files; another Python release ships other text, and a result's cache key holds a digest of the
bytes it trained on (:meth:`GPTStdlib.data_digest`), so a cached result never outlives its text.

Model (Radford et al. 2019's pre-norm decoder; torch's default initialisation)::

    x = E[byte] + P[pos];   x += Attn(LN(x));   x += W₂ GELU(W₁ LN(x));   logits = LN(x) Wₒ

with causal multi-head self-attention written as matrix products (``vmap`` batches them; see
docs/performance.md). The query/key/value projection has no bias: the key bias gets no gradient
(softmax ignores a shift), and an adaptive rule would move it by rounding noise alone.
Examples are non-overlapping windows of ``context`` bytes; the loss is the mean next-byte
cross-entropy in nats, and the held-out metrics are that loss and ``bits_per_byte``.

The task is a :class:`~evolveopt.tasks.module.ModuleTask` (the model is an ``nn.Module``, the
population one ``vmap`` over ``functional_call``), so each member trains exactly like
``GPT(...)`` trained alone with ``build_optimizer``. The example package's ``gpt_stdlib``
(``examples/evolveopt_examples/gpt.py``) is the same model and data named as a user's plug-in.
"""

from __future__ import annotations

import math
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from evolveopt.tasks.base import Option, Task, TaskError
from evolveopt.tasks.module import ModuleTask

VOCAB = 256  # bytes

STDLIB_FILES = (  # sorted; each a top-level module file of CPython 3.11 to 3.13
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "codecs.py", "configparser.py",
    "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "datetime.py", "difflib.py", "dis.py", "enum.py",
    "fnmatch.py", "fractions.py", "ftplib.py", "functools.py", "gettext.py", "glob.py", "gzip.py", "heapq.py",
    "hmac.py", "inspect.py", "ipaddress.py", "locale.py", "mailbox.py", "numbers.py", "operator.py",
    "optparse.py", "pdb.py", "pickle.py", "pprint.py", "queue.py", "random.py", "selectors.py", "shlex.py",
    "shutil.py", "socket.py", "statistics.py", "string.py", "subprocess.py", "tarfile.py", "tempfile.py",
    "textwrap.py", "threading.py", "timeit.py", "tokenize.py", "traceback.py", "typing.py", "uuid.py",
    "weakref.py",
)


@lru_cache(maxsize=4)
def stdlib_text(heldout_every: int = 10) -> tuple[bytes, bytes]:
    """(train, held-out) bytes of :data:`STDLIB_FILES`, split by file: every ``heldout_every``-th is held out."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    train, heldout = bytearray(), bytearray()
    for index, name in enumerate(STDLIB_FILES):
        path = folder / name
        if not path.is_file():
            raise TaskError(f"task 'gpt': this Python's standard library ({folder}) has no {name}")
        (heldout if index % heldout_every == 0 else train).extend(path.read_bytes())
    return bytes(train), bytes(heldout)


def windows(text: bytes, context: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows: inputs ``[N, context]`` and the next bytes as targets."""
    ids = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    count = (len(ids) - 1) // context
    return ids[:count * context].view(count, context), ids[1:count * context + 1].view(count, context)


class CausalSelfAttention(nn.Module):
    """softmax(QKᵀ/√d_head + causal mask) V, heads side by side, then an output projection."""

    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width)
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


def stdlib_windows(context: int, train_bytes: int, heldout_bytes: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(train, held-out) windows of the first ``train_bytes`` / ``heldout_bytes`` of :func:`stdlib_text`."""
    train, heldout = stdlib_text()
    return windows(train[:train_bytes], context), windows(heldout[:heldout_bytes], context)


class GPTStdlib(ModuleTask):
    """The built-in ``gpt`` task (see the module docstring); its identity is its options and its data digest."""

    name = "gpt"
    description = "byte-level GPT (2 blocks, width 32, 4 heads, context 32) on standard-library source, batch 16"
    OPTIONS = {
        "layers": Option(2, (1, 12), numeric=True, doc="transformer blocks"),
        "width": Option(32, (8, 1024), numeric=True, doc="residual width"),
        "heads": Option(4, (1, 16), numeric=True, doc="attention heads (must divide width)"),
        "context": Option(32, (2, 1024), numeric=True, doc="bytes per window"),
        "batch_size": Option(16, (1, 4096), numeric=True, doc="windows per step"),
        "train_bytes": Option(1_000_000, (4096, 10_000_000), numeric=True, doc="bytes of training text"),
        "heldout_bytes": Option(4096, (256, 1_000_000), numeric=True, doc="bytes of held-out text"),
    }

    def __init__(self, **options: Any):
        Task.__init__(self, **options)  # checks the options first
        o = self.options
        if o["width"] % o["heads"]:
            raise TaskError(f"task '{self.name}': option heads={o['heads']} must divide width={o['width']}")
        train, heldout = stdlib_windows(o["context"], o["train_bytes"], o["heldout_bytes"])
        if len(heldout[0]) == 0:
            raise TaskError(f"task '{self.name}': option heldout_bytes={o['heldout_bytes']} holds no window of "
                            f"context={o['context']} bytes")
        super().__init__(self.name, self._model, train, next_byte_loss, batch_size=o["batch_size"],
                         heldout=heldout, metrics={"bits_per_byte": bits_per_byte}, options=o)

    def _model(self, seed: int) -> GPT:
        o = self.options
        return GPT(o["layers"], o["width"], o["heads"], o["context"])

    @property
    def spec(self) -> dict[str, Any]:
        return Task.spec.fget(self)

    @property
    def label(self) -> str:
        return Task.label.fget(self)
