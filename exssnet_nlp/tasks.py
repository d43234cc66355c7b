"""Task bookkeeping shared by every method: task infos, the current task, per-task heads and seeds."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

CREATED = "created"
FINISHED = "finished"

ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}


@dataclass
class TaskInfo:
    """What a model knows of a task: its name, label set and where it is in learning."""

    name: str
    num_labels: int
    label_names: list[str] = field(default_factory=list)
    state: str = CREATED  # created -> <phase name> ... -> finished

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Sentence vector of each sequence: the first token (`cls`) or the mean over real tokens (`mean`)."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TaskHead(nn.Module):
    """pool -> dropout -> dense -> activation -> dropout -> out: the layout of BERT's pooler plus
    classifier and of RoBERTa's classification head, so CLS-pooled tasks export exactly."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str, activation: str, dropout: float) -> None:
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.dropout(pool(hidden, attention_mask, self.pooling))
        x = self.dropout(self.activation(self.dense(x)))
        return self.out(x)


def task_seed(seed: int, name: str) -> int:
    """A task's own seed, from the run seed and its name: the same task starts the same in every run and copy."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def seeded(seed: int, name: str, build: Callable[[], Any]) -> Any:
    """Run `build` on the task's own RNG stream (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task_seed(seed, name))
        return build()


def freeze_to_buffers(module: nn.Module) -> None:
    """Turn every parameter of `module` into a buffer: no optimizer, however built, can reach it."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach())


def thaw_to_parameters(module: nn.Module, names: list[str]) -> None:
    """Turn the buffers `names` (dotted, within `module`) back into trainable parameters (a fresh copy to train)."""
    for dotted in names:
        owner_name, _, name = dotted.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        tensor = owner._buffers.pop(name)
        owner.register_parameter(name, nn.Parameter(tensor.detach().clone(), requires_grad=False))


def module_device(module: nn.Module) -> torch.device:
    """The device of `module`'s first tensor, parameter or buffer (isolating models may hold no parameter)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def load_into_buffers(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Set `module`'s tensors from `tensors` (exact key set and shapes), then freeze them to buffers."""
    expected = {k: v for k, v in module.state_dict().items()}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"{what}: tensors do not fit (missing {missing[:4]}, unexpected {extra[:4]}); the checkpoint is corrupt "
                         "or belongs to another model.")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{what}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}; the "
                             "checkpoint belongs to another model or is corrupt.")
    reference = next(iter(expected.values()), None)
    if reference is not None:
        module.to(dtype=next(iter(tensors.values())).dtype, device=reference.device)
    module.load_state_dict(tensors, strict=True)
    freeze_to_buffers(module)


def stored_values(live: torch.Tensor, dtype: torch.dtype | None, what: str) -> torch.Tensor:
    """`live` as a checkpoint stores it, in `dtype` (None: as is); refused when that would not give back `live`
    exactly (the checkpoint must serve what the live model does)."""
    stored = live if dtype is None else live.to(dtype)
    if not torch.equal(stored.to(live.dtype), live):
        raise ValueError(f"{what} are not {stored.dtype} numbers, so a checkpoint could not reproduce them; set "
                         "values_dtype with model.keep_values_in(), not by hand.")
    return stored


def tensor_bytes(tensors: dict[str, torch.Tensor] | list[torch.Tensor]) -> int:
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return sum(t.numel() * t.element_size() for t in values)


class TaskRegistry:
    """The tasks a model has learned, in order, and which one `forward` uses by default."""

    task_infos: list[TaskInfo]
    _current: int | None
    _current_before_learning: int | None  # the current task when the learning one was added, restored if it goes

    def _init_tasks(self) -> None:
        self.task_infos = []
        self._current = None
        self._current_before_learning = None

    @property
    def tasks(self) -> list[str]:
        """Task names in learning order."""
        return [t.name for t in self.task_infos]

    @property
    def current_task(self) -> str | None:
        return None if self._current is None else self.task_infos[self._current].name

    @property
    def finished_tasks(self) -> list[str]:
        return [t.name for t in self.task_infos if t.state == FINISHED]

    @property
    def learning_task(self) -> str | None:
        """The task being learned (added, not yet finished), if any."""
        for info in self.task_infos:
            if info.state != FINISHED:
                return info.name
        return None

    def task_index(self, task: str | None = None) -> int:
        if task is None:
            if self._current is None:
                raise ValueError("no current task: call add_task(name, num_labels) or set_task(name) first.")
            return self._current
        for i, info in enumerate(self.task_infos):
            if info.name == task:
                return i
        raise ValueError(f"unknown task {task!r}; known tasks: {self.tasks}. Add it with add_task(name, num_labels).")

    def task_info(self, task: str | None = None) -> TaskInfo:
        return self.task_infos[self.task_index(task)]

    def set_task(self, name: str) -> None:
        """Make `name` the task that `forward` uses by default."""
        self._current = self.task_index(name)

    def _register_task(self, name: str, num_labels: int, label_names: list[str] | None) -> int:
        """Validate and append a new task (the one to learn next); returns its index."""
        if not isinstance(name, str) or not name:
            raise ValueError("task name must be a non-empty string.")
        if name in self.tasks:
            raise ValueError(f"task {name!r} was already added; pick another name, or set_task({name!r}) to use it.")
        learning = self.learning_task
        if learning is not None:
            raise ValueError(f"task {learning!r} is still being learned; call finish_task() (or discard_task()) before adding {name!r}.")
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}.")
        label_names = [str(n) for n in label_names] if label_names else [str(i) for i in range(num_labels)]
        if len(label_names) != num_labels:
            raise ValueError(f"label_names has {len(label_names)} names but num_labels={num_labels}.")
        self._current_before_learning = self._current
        self.task_infos.append(TaskInfo(name, num_labels, label_names))
        self._current = len(self.task_infos) - 1
        return self._current

    def _learning_index(self, action: str, allowed_states: tuple[str, ...] | None = None) -> int:
        """Index of the task being learned; refuses when there is none or it is in another state."""
        name = self.learning_task
        if name is None:
            raise ValueError(f"cannot {action}: no task is being learned; call add_task(name, num_labels) first.")
        index = self.task_index(name)
        state = self.task_infos[index].state
        if allowed_states is not None and state not in allowed_states:
            raise ValueError(f"cannot {action} for task {name!r} in state {state!r}; allowed from: {', '.join(allowed_states)}.")
        return index

    def _unregister_learning_task(self) -> int:
        """Remove the task being learned (discarded, or a failed add/install); the current task goes back to the
        one that was current before it was added, unless another finished task was made current since."""
        index = self._learning_index("discard_task")
        self.task_infos.pop(index)
        if self._current is None or self._current >= index:  # the learning task is always the last one
            previous = getattr(self, "_current_before_learning", None)
            if previous is None or previous >= len(self.task_infos):
                previous = len(self.task_infos) - 1 if self.task_infos else None
            self._current = previous
        self._current_before_learning = None
        return index
