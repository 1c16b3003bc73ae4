"""Your own model as a population task: P copies of a ``torch.nn.Module`` trained at once.

From a model factory (seed → module), training data ``(inputs, targets)``, a loss
``loss(outputs, targets) → scalar`` and, optionally, held-out data, :class:`ModuleTask` builds a
stacked run: the P members' parameters and buffers are stacked (``torch.func.stack_module_state``)
and one ``vmap`` over ``functional_call`` computes every member's loss. Buffers such as BatchNorm's
running statistics are kept per member.

Member i is exactly the lone run a user would write::

    torch.manual_seed(seed); model = factory(seed)            # init from the global RNG
    for step in 1, 2, ...: loss(model(x[b_step]), y[b_step])   # b_step: the member's data order

Its data order comes from its own seed (as in every task); random layers (dropout) draw from the
global RNG state the factory left behind, so a model with random layers runs member by member,
each under its own saved RNG state (``vmap`` cannot give member i the numbers a lone run draws).
Whether a model draws random numbers is found by one probe step under ``vmap(randomness="error")``.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from evolveopt.tasks.base import Task, TaskError, TaskRun, batch_indices, epoch_orders
from evolveopt.tasks.datasets import tensors_digest

Loss = Callable[[Tensor, Tensor], Tensor]
HELDOUT_OUTPUT_BYTES = 1 << 27  # held-out outputs of this many bytes at most are computed at once (members in chunks)


class ModuleTask(Task):
    """A population task from a model factory, data and a loss (see the module docstring).

    ``name`` and ``version`` (a string the user changes when the model, data or loss change) are
    the task's identity in caches and logs. ``metrics`` are extra held-out measures
    ``metric(outputs, targets) → scalar`` (for example accuracy).
    """

    name = "module"
    description = "a user's torch.nn.Module, data and loss, trained as a vmapped population"

    def __init__(self, name: str, model: Callable[[int], nn.Module], data: tuple[Tensor, Tensor], loss: Loss,
                 batch_size: int, heldout: tuple[Tensor, Tensor] | None = None,
                 metrics: Mapping[str, Loss] | None = None, version: str = "1",
                 options: Mapping[str, Any] | None = None):
        super().__init__(**dict(options or {}))
        self.task_name, self.factory, self.loss_fn, self.version = name, model, loss, str(version)
        self.data, self.heldout_data, self.metrics = _pair(name, "data", data), heldout, dict(metrics or {})
        if heldout is not None:
            self.heldout_data = _pair(name, "heldout", heldout)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= len(self.data[0]):
            raise TaskError(f"task '{name}': batch_size {batch_size!r} must be an integer from 1 to the "
                            f"{len(self.data[0])} training examples")
        self.batch_size = batch_size
        self.origin: dict[str, Any] = {"name": name}  # make_task records how it was built (options too)

    @property
    def spec(self) -> dict[str, Any]:
        """Identity in caches and work units: how it is built (name or import path, options) and its version."""
        return {**self.origin, "task_version": self.version}

    @property
    def label(self) -> str:
        return self.task_name

    def model(self, seed: int) -> tuple[nn.Module, Tensor]:
        """The factory's module for ``seed`` (built after ``torch.manual_seed(seed)``) and the CPU RNG
        state it leaves: where the member's random layers start drawing."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                module = self.factory(seed)
            except Exception as exc:  # noqa: BLE001 - the user's code: name it, keep the cause
                raise TaskError(f"task '{self.task_name}': the model factory raised {type(exc).__name__}: {exc}") from exc
            state = torch.get_rng_state()
        if not isinstance(module, nn.Module):
            raise TaskError(f"task '{self.task_name}': the model factory returned {type(module).__name__}, "
                            "not a torch.nn.Module")
        if not any(True for _ in module.parameters()):
            raise TaskError(f"task '{self.task_name}': the model has no parameters to train")
        return module, state

    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> "ModuleRun":
        built = [self.model(s) for s in seeds]
        modules = [m.to(device).train() for m, _ in built]
        shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in modules}
        if len(shapes) > 1:
            raise TaskError(f"task '{self.task_name}': the factory's models differ in their parameter shapes "
                            "across seeds; every member must have the same architecture")
        params, buffers = stack_module_state(modules)
        template = copy.deepcopy(modules[0]).to("meta")
        orders = epoch_orders(seeds, len(self.data[0]), device)
        return ModuleRun(self, template, params, buffers, [s for _, s in built], orders, device)

    def param_count(self) -> int:
        return sum(p.numel() for p in self.model(0)[0].parameters())

    def data_digest(self) -> str:
        """:func:`~evolveopt.tasks.datasets.tensors_digest` of the training and held-out tensors (once)."""
        if not hasattr(self, "_digest"):
            self._digest = tensors_digest((*self.data, *(self.heldout_data or ())))
        return self._digest

    def activation_bytes(self) -> int:
        """Bytes autograd saves for the backward of one member's step, measured once on one batch
        (``saved_tensors_hooks`` sees every saved tensor), so population sizing counts them."""
        if not hasattr(self, "_activation_bytes"):
            model, state = self.model(0)
            saved = 0

            def pack(tensor: Tensor) -> Tensor:
                nonlocal saved
                saved += tensor.numel() * tensor.element_size()
                return tensor

            x, y = self.data[0][:self.batch_size], self.data[1][:self.batch_size]
            with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                torch.set_rng_state(state)
                self.loss_fn(model.train()(x), y)
            self._activation_bytes = saved
        return self._activation_bytes


class ModuleRun(TaskRun):
    """P members of a :class:`ModuleTask` in training (``params`` in the module's parameter order)."""

    def __init__(self, task: ModuleTask, template: nn.Module, params: dict[str, Tensor],
                 buffers: dict[str, Tensor], rng_states: list[Tensor], orders: Tensor, device):
        self.task, self.template, self.names = task, template, list(params)
        self.params = [params[n] for n in self.names]
        self.buffers, self.rng_states, self.orders = buffers, rng_states, orders
        self.x, self.y = (t.to(device) for t in task.data)
        self.random: bool | None = None  # found by the first step's probe

    def _members(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.params))

    def _member_output(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def _member_loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        loss = self.task.loss_fn(self._member_output(params, buffers, x), y)
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise TaskError(f"task '{self.task.task_name}': the loss must return one scalar per member, got {shape}")
        return loss

    def loss(self, step: int) -> Tensor:
        index = batch_indices(self.orders, step, self.task.batch_size)
        x, y = self.x[index], self.y[index]
        if self.random is None:
            self.random = self._draws_random_numbers(x, y)
        self.template.train()
        if not self.random:
            return vmap(self._member_loss, randomness="error")(self._members(), self.buffers, x, y)
        return torch.stack([self._lone_loss(i, x[i], y[i]) for i in range(len(self.rng_states))])

    def _lone_loss(self, i: int, x: Tensor, y: Tensor) -> Tensor:
        """Member i alone under its own RNG state (random layers draw what a lone run draws)."""
        params = {n: p[i] for n, p in self._members().items()}
        buffers = {n: b[i] for n, b in self.buffers.items()}  # views: BatchNorm updates its member's slice
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_states[i])
            loss = self._member_loss(params, buffers, x, y)
            self.rng_states[i] = torch.get_rng_state()
        return loss

    def _draws_random_numbers(self, x: Tensor, y: Tensor) -> bool:
        """One probe step, on copies of member 0, under vmap(randomness="error")."""
        params = {n: p[:1].detach().clone() for n, p in self._members().items()}
        buffers = {n: b[:1].clone() for n, b in self.buffers.items()}
        try:
            vmap(self._member_loss, randomness="error")(params, buffers, x[:1], y[:1])
        except RuntimeError as exc:
            if "randomness" not in str(exc):
                raise
            return True
        return False

    @torch.no_grad()
    def heldout(self) -> dict[str, Tensor]:
        if self.task.heldout_data is None:
            return {}
        x, y = (t.to(self.x.device) for t in self.task.heldout_data)
        members = self.params[0].shape[0]
        measures = {"loss": self.task.loss_fn, **self.task.metrics}
        values: dict[str, list[Tensor]] = {name: [] for name in measures}
        forward = vmap(self._member_output, in_dims=(0, 0, None), randomness="error")
        start, chunk = 0, 1  # member 0 alone first: its outputs' size sets how many members run at once
        self.template.eval()
        try:
            while start < members:
                part = slice(start, start + chunk)
                outputs = forward({n: p[part] for n, p in self._members().items()},
                                  {n: b[part] for n, b in self.buffers.items()}, x)
                for name, fn in measures.items():
                    values[name] += [fn(output, y) for output in outputs]
                start += chunk
                chunk = max(1, HELDOUT_OUTPUT_BYTES // max(1, outputs[0].numel() * outputs.element_size()))
        finally:
            self.template.train()
        return {name: torch.stack(found).float() for name, found in values.items()}


def _pair(task: str, what: str, data: Any) -> tuple[Tensor, Tensor]:
    if (not isinstance(data, (tuple, list)) or len(data) != 2
            or not all(isinstance(t, Tensor) for t in data) or len(data[0]) != len(data[1]) or len(data[0]) == 0):
        raise TaskError(f"task '{task}': {what} must be a pair (inputs, targets) of tensors with the same "
                        "non-zero number of examples")
    return data[0], data[1]
