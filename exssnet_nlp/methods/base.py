"""The contract every continual method implements, and what all of them share.

A method is a `MethodConfig` subclass (its settings: the single source of truth for Python, YAML and
`--flags`) plus a `ContinualModel` subclass, registered under a name (`methods.registry`). The trainer,
the checkpoint code and the CLI only talk to this interface:

- `phases()`: the training phases of a task, each naming the argument fields that give its learning
  rate and epochs; the trainer calls `begin_phase(name)` for each, then trains `trainable_parameters()`.
- `add_task` / `begin_phase` / `finish_task` / `discard_task` / `set_task`, and `forward(..., task=...)`.
- `task_state(task)` -> the tensors a finished task contributes to a checkpoint; `install_task` puts them
  back directly (no replay); `shared_state()` / `load_shared_state()` for what every task shares and
  training changes (e.g. `finetune`'s encoder).
- `task_storage_bytes(task)`, and the capabilities `isolates_tasks`, `supports_kkt`, `supports_export`,
  `supports_task_inference`, `learns_jointly`.

Subclasses implement hooks (`_start_task`, `_enter_phase`, `_phase_parameters`, `_finish_task`, `_discard_task`,
`encode`, `_task_tensors`, `_install_task_tensors`); the task bookkeeping (heads, states, seeds) is done here.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from ..checkpoint import fingerprint_tensors, save_model
from ..export import find_tokenizer
from ..hub import push_to_hub
from ..references import resolve_reference
from ..serving import ROUTER_PREFIX, ServingMixin
from ..tasks import (
    CREATED,
    FINISHED,
    TaskHead,
    TaskRegistry,
    freeze_to_buffers,
    load_into_buffers,
    module_device,
    seeded,
    tensor_bytes,
)
from .config import MethodConfig, Phase, check_choice
from .loading import load_pretrained

__all__ = ["ContinualModel", "MethodConfig", "Phase", "check_choice"]
HEAD_PREFIX = "head."


def _load_encoder(reference: str, resolved: str, kwargs: dict[str, Any]) -> PreTrainedModel:
    """`AutoModel.from_pretrained`, with one message for the ways a reference can be wrong."""
    looks_local = resolved.startswith((".", "/", "~")) or Path(resolved).expanduser().exists() or resolved.count("/") > 1
    if looks_local and not Path(resolved).expanduser().is_dir():
        raise ValueError(f"model {reference!r}: no such directory {resolved!r}. Give the path of a saved model (a folder "
                         "with config.json), a Hub id such as bert-base-uncased, or pkg:MODULE.")
    try:
        return AutoModel.from_pretrained(resolved, **kwargs)
    except OSError as err:
        offline = " (HF_HUB_OFFLINE is set: only cached models load)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ValueError(f"could not load the encoder {reference!r}{offline}: {str(err).splitlines()[0]} Check the Hub id "
                         "or the path; without network, download the model first or use a local copy.") from None


class ContinualModel(TaskRegistry, ServingMixin, nn.Module):
    """A shared encoder plus one head per task, learned one task after another (see the module docstring)."""

    method: str = "?"  # the registry name (a class attribute, or a property when one class serves several names)
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    isolates_tasks: ClassVar[bool] = False  # a finished task's outputs never change (zero forgetting by construction)
    supports_kkt: ClassVar[bool] = False
    supports_export: ClassVar[bool] = False
    supports_task_inference: ClassVar[bool] = False
    learns_jointly: ClassVar[bool] = False  # all tasks at once (begin_joint / end_joint): the multitask reference

    def __init__(self, encoder: PreTrainedModel, config: MethodConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}.")
        self.config = config
        self.encoder = encoder
        self.model_type = getattr(encoder.config, "model_type", "unknown")
        self.heads = nn.ModuleDict()
        self._init_tasks()
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        # What the encoder's parameters were: a method that trains a copy (independent) thaws these names.
        self._encoder_parameter_names = [n for n, _ in self.encoder.named_parameters()]
        if self.isolates_tasks:
            # Shared tensors as buffers: no optimizer, however built, can change what finished tasks compute.
            freeze_to_buffers(self.encoder)
        # The pristine encoder, as a checkpoint will re-load it by name: what its tasks were learned on.
        self._base_keys = list(encoder.state_dict())
        self.base_fingerprint = fingerprint_tensors(encoder.state_dict())
        self._encoder_args = set(inspect.signature(encoder.forward).parameters)
        self._init_serving()  # tokenizer, encoder reference, per-task serving info and routers

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, encoder: PreTrainedModel | str, config: MethodConfig | None = None,
                     **from_pretrained_kwargs: Any) -> ContinualModel:
        """Wrap `encoder` (a model, or a Hub id / local path loaded with `AutoModel`)."""
        config = config if config is not None else cls.config_class()
        reference = str(encoder) if isinstance(encoder, (str, Path)) else None
        if reference is not None:
            # float32 unless asked otherwise: transformers 5 keeps a half-precision checkpoint's dtype.
            from_pretrained_kwargs.setdefault("dtype", torch.float32)
            encoder = _load_encoder(reference, resolve_reference(reference), from_pretrained_kwargs)
        elif not isinstance(encoder, nn.Module):
            raise ValueError(f"encoder must be a transformers model, a Hub id or a path, not {type(encoder).__name__}.")
        model = cls(getattr(encoder, "base_model", encoder), config)  # a task model: keep only its encoder
        if reference is not None:
            model.encoder_reference = reference
            model.tokenizer = find_tokenizer(resolve_reference(reference))
        return model

    @property
    def base_model_name_or_path(self) -> str | None:
        """Where the encoder was loaded from (Hub id or path), if known."""
        return getattr(self.encoder.config, "_name_or_path", None) or None

    def base_state(self) -> dict[str, torch.Tensor]:
        """The encoder's tensors under their plain names, for `base_model.safetensors`."""
        state = self.encoder.state_dict()
        missing = [k for k in self._base_keys if k not in state]
        if missing:  # a wrapper renamed the encoder's tensors: the method must map them back itself
            raise ValueError(f"{type(self).__name__}.base_state: the encoder no longer holds {missing[:4]}; override base_state().")
        return {k: state[k] for k in self._base_keys}

    @classmethod
    def config_for_saved_base(cls, config: MethodConfig) -> MethodConfig:
        """The config to rebuild with when the encoder comes from `base_state()` (already transformed)."""
        return config

    def _device(self) -> torch.device:
        return module_device(self.encoder)

    # --- the contract: phases and tasks ------------------------------------------------------
    def phases(self) -> list[Phase]:
        """The phases of a task, in order."""
        raise NotImplementedError

    def add_task(self, name: str, num_labels: int, label_names: list[str] | None = None, init_seed: int | None = None) -> None:
        """Add a task to learn next and make it current (its head is seeded by the task's name and `init_seed`,
        default the config's seed: a restarted task passes another)."""
        index = self._register_task(name, num_labels, label_names)
        try:
            self.heads[str(index)] = self._new_head(name, num_labels, init_seed)
            self._start_task(index)
        except BaseException:
            if str(index) in self.heads:
                del self.heads[str(index)]
            self._unregister_learning_task()
            raise
        self._set_trainable(index, None)

    def _new_head(self, name: str, num_labels: int, seed: int | None = None) -> TaskHead:
        hidden = self.encoder.config.hidden_size
        activation = self.config.resolved_head_activation(self.model_type)
        head = seeded(self.config.seed if seed is None else seed, name,
                      lambda: TaskHead(hidden, num_labels, self.config.pooling, activation, self.config.head_dropout))
        return head.to(self._device())

    def begin_phase(self, name: str) -> None:
        """Start phase `name` of the task being learned (phases run in the order `phases()` gives)."""
        names = [p.name for p in self.phases()]
        if name not in names:
            raise ValueError(f"method {self.method!r} has no phase {name!r}; its phases: {', '.join(names)}.")
        position = names.index(name)
        allowed = (CREATED,) if position == 0 else (names[position - 1],)
        index = self._learning_index(f"begin phase {name!r}", allowed)
        self._enter_phase(index, name)
        self.task_infos[index].state = name
        self._set_trainable(index, name)

    def finish_task(self) -> None:
        """Freeze the task being learned for good; from now on nothing may change its outputs."""
        index = self._learning_index("finish_task", tuple(p.name for p in self.phases()))
        self._finish_task(index)
        freeze_to_buffers(self.heads[str(index)])
        self.task_infos[index].state = FINISHED
        self._set_trainable(index, FINISHED)

    def discard_task(self) -> None:
        """Forget the task being learned (e.g. after a failed run); finished tasks are untouched."""
        index = self._learning_index("discard_task")
        self._discard_task(index)
        del self.heads[str(index)]
        self._unregister_learning_task()

    def _set_trainable(self, index: int, phase: str | None) -> None:
        for param in self.parameters():
            param.requires_grad_(False)
        if phase not in (None, CREATED, FINISHED):
            for param in self.heads[str(index)].parameters():
                param.requires_grad_(True)
            for param in self._phase_parameters(index, phase):
                param.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self, phase: str) -> list[tuple[tuple[str, ...] | None, list[nn.Parameter]]]:
        """What phase `phase` of the learning task trains besides the head, as (LR settings, parameters) groups;
        `None` means the phase's own learning rate. Override to give parts their own rate (e.g. `wsn`)."""
        return [(None, self._phase_parameters(self._learning_index("parameter_groups"), phase))]

    def head_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        return list(self.heads[str(self.task_index(task))].parameters())

    # --- hooks for subclasses -----------------------------------------------------------------
    def _start_task(self, index: int) -> None:
        """Create the per-task state of new task `index` (nothing trainable yet)."""

    def _enter_phase(self, index: int, phase: str) -> None:
        """Prepare phase `phase` of task `index`."""

    def _phase_parameters(self, index: int, phase: str) -> list[nn.Parameter]:
        """What phase `phase` trains besides the task's head."""
        raise NotImplementedError

    def _finish_task(self, index: int) -> None:
        """Freeze task `index`'s per-task state (to buffers, or into shared tensors it alone owns)."""

    def _discard_task(self, index: int) -> None:
        """Drop the per-task state of the task being learned."""

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, task: str | None = None) -> torch.Tensor:
        """Last hidden state of the encoder as `task` sees it."""
        raise NotImplementedError

    def _encoder_kwargs(self, input_ids, attention_mask, token_type_ids) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self._encoder_args:
            kwargs["token_type_ids"] = token_type_ids
        return kwargs

    def _task_tensors(self, index: int) -> dict[str, torch.Tensor]:
        """Tensors finished task `index` needs besides its head (names without `head.`)."""
        return {}

    def _install_task_tensors(self, index: int, tensors: dict[str, torch.Tensor], file_name: str) -> None:
        """Install `_task_tensors` of a new finished task `index` (the task is registered, its head loaded)."""
        if tensors:
            raise ValueError(f"{file_name}: unexpected tensors {sorted(tensors)[:4]} for method {self.method!r}.")

    def _install_task_metadata(self, index: int, metadata: dict[str, Any], file_name: str) -> None:
        """Take back what `task_metadata` gave for new finished task `index` (before its tensors are installed)."""

    # --- checkpoints -----------------------------------------------------------------------------
    def task_state(self, task: str) -> dict[str, torch.Tensor]:
        """Everything finished `task` contributes to a checkpoint: its head (`head.*`) and method tensors."""
        index = self.task_index(task)
        if self.task_infos[index].state != FINISHED:
            raise ValueError(f"task {task!r} is not finished; only finished tasks are saved.")
        tensors = {HEAD_PREFIX + k: v for k, v in self.heads[str(index)].state_dict().items()}
        tensors.update(self._task_tensors(index))
        tensors.update({ROUTER_PREFIX + k: v for k, v in self.routers.get(task, {}).items()})
        return tensors

    def task_metadata(self, task: str) -> dict[str, Any]:
        """JSON the task contributes to the checkpoint config (beyond name and labels)."""
        return {}

    def install_task(self, name: str, num_labels: int, label_names: list[str] | None, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, Any] | None = None, file_name: str = "task file") -> None:
        """Add a finished task directly from `task_state` tensors (loading a checkpoint)."""
        if self.learning_task is not None:
            raise ValueError(f"task {self.learning_task!r} is being learned; finish or discard it before installing {name!r}.")
        # Sizes come from an untrusted file: bound them by the tensors actually present before building anything.
        out = tensors.get(HEAD_PREFIX + "out.weight")
        if out is None or isinstance(num_labels, bool) or not isinstance(num_labels, int) or out.shape[0] != num_labels:
            rows = None if out is None else out.shape[0]
            raise ValueError(f"{file_name}: task {name!r} claims num_labels={num_labels!r} but its head has {rows} output "
                             "rows; the checkpoint is corrupt or was edited.")
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(f"{file_name}: task {name!r} has {len(label_names)} label names for {num_labels} labels; the "
                             "checkpoint is corrupt or was edited.")
        index = self._register_task(name, num_labels, label_names)
        try:
            head = self._new_head(name, num_labels)
            head_tensors = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
            load_into_buffers(head, head_tensors, f"{file_name} (head of task {name!r})")
            self.heads[str(index)] = head
            self._install_task_metadata(index, dict(metadata or {}), file_name)
            own = {k: v for k, v in tensors.items() if not k.startswith((HEAD_PREFIX, ROUTER_PREFIX))}
            self._install_task_tensors(index, own, file_name)
            router = {k[len(ROUTER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ROUTER_PREFIX)}
            if router:
                self.routers[name] = router
        except BaseException:
            if str(index) in self.heads:
                del self.heads[str(index)]
            self._unregister_learning_task()
            raise
        self.task_infos[index].state = FINISHED
        self._set_trainable(index, FINISHED)

    def shared_state(self) -> dict[str, torch.Tensor]:
        """Tensors every task shares that training changed (saved once, in `shared.safetensors`)."""
        return {}

    def load_shared_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"method {self.method!r} stores no shared tensors, but the checkpoint holds {sorted(tensors)[:4]}.")

    def task_storage_bytes(self, task: str) -> dict[str, int]:
        """Bytes finished `task` adds to a checkpoint, by kind (the first part of each tensor name), and `total`."""
        by_kind: dict[str, int] = {}
        for name, tensor in self.task_state(task).items():
            kind = name.split(".", 1)[0]
            by_kind[kind] = by_kind.get(kind, 0) + tensor_bytes([tensor])
        by_kind["total"] = sum(by_kind.values())
        return by_kind

    def shared_storage_bytes(self) -> int:
        return tensor_bytes(self.shared_state())

    def capacity(self) -> dict[str, dict[str, float]]:
        """Per shared layer: fractions `used` by finished tasks and `free` for new ones (methods that track it)."""
        return {}

    def export_task(self, task: str, output_dir: str | None = None) -> PreTrainedModel:
        """A plain `transformers` sequence-classification model for one task."""
        raise ValueError(f"method {self.method!r} cannot export a task to a plain transformers model.")

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> Path:
        """Write a checkpoint: JSON config + one safetensors file per finished task (see `exssnet_nlp.checkpoint`)."""
        return save_model(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, checkpoint: str, revision: str | None = None, **kwargs: Any) -> ContinualModel:
        """Rebuild a model from `save_pretrained`'s directory or a Hub repo id."""
        model = load_pretrained(checkpoint, revision=revision, **kwargs)
        if not isinstance(model, cls):
            raise ValueError(f"{checkpoint} holds a {type(model).__name__} (method {model.method!r}), not a {cls.__name__}; "
                             "load it with exssnet_nlp.load_pretrained.")
        return model

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the checkpoint and a model card to the Hugging Face Hub."""
        return push_to_hub(self, repo_id, **kwargs)

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                task: str | list[str] | None = None, **_: Any) -> SequenceClassifierOutput:
        """Logits of `task` (default: the current task); `task` may be one name per example."""
        if isinstance(task, (list, tuple)):
            return self._forward_mixed(input_ids, attention_mask, token_type_ids, labels, list(task))
        index = self.task_index(task)
        hidden = self.encode(input_ids, attention_mask, token_type_ids, task=self.task_infos[index].name)
        logits = self.heads[str(index)](hidden, attention_mask)
        loss = None
        if labels is not None:
            self._check_labels(labels, index)
            loss = F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _check_labels(self, labels: torch.Tensor, index: int) -> None:
        info = self.task_infos[index]
        if labels.device.type != "cpu":
            return  # reading GPU values would stall every step; the data layer has checked the range
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= info.num_labels):
            raise ValueError(f"labels for task {info.name!r} must be in [0, {info.num_labels}); got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]. Check the label column or num_labels.")

    def _forward_mixed(self, input_ids, attention_mask, token_type_ids, labels, task_names):
        if len(task_names) != input_ids.shape[0]:
            raise ValueError(f"task has {len(task_names)} names for a batch of {input_ids.shape[0]} examples.")
        width = max(self.task_info(t).num_labels for t in set(task_names))
        logits = input_ids.new_full((len(task_names), width), float("-inf"), dtype=torch.float32)
        total_loss = None
        for name in dict.fromkeys(task_names):
            rows = torch.tensor([i for i, t in enumerate(task_names) if t == name], device=input_ids.device)
            picked = [None if x is None else x[rows] for x in (attention_mask, token_type_ids, labels)]
            out = self.forward(input_ids[rows], *picked, task=name)
            logits[rows, : out.logits.shape[1]] = out.logits.float()
            if out.loss is not None:
                part = out.loss * len(rows)
                total_loss = part if total_loss is None else total_loss + part
        loss = None if total_loss is None else total_loss / len(task_names)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    # --- reporting -----------------------------------------------------------------------------------
    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(t.numel() for t in self.state_dict().values())
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}")
