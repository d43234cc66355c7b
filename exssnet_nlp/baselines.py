"""Dense baselines with the same task API as `ExSSNetModel`, so one trainer runs every method.

- `finetune`: one shared encoder fine-tuned task after task, a head per task (the forgetting reference).
- `independent`: a fresh copy of the pretrained encoder fine-tuned per task (no sharing: the upper bound,
  at the storage cost of one full encoder per task).
"""

from __future__ import annotations

import copy
import inspect
import os
import tempfile
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .config import DEFAULT_HEAD_ACTIVATION
from .model import CREATED, FINISHED, TaskHead, TaskInfo, TaskRegistry, _freeze_to_buffers, seeded_head

DENSE_METHODS = ("finetune", "independent")
DENSE_PHASE = "dense"


class DenseContinualModel(TaskRegistry, nn.Module):
    """A dense encoder (shared or copied per task) with one head per task."""

    def __init__(self, encoder: PreTrainedModel, method: str = "finetune", pooling: str = "cls",
                 head_dropout: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if method not in DENSE_METHODS:
            raise ValueError(f"method={method!r} is not a dense baseline; allowed: {', '.join(DENSE_METHODS)}.")
        self.method = method
        self.pooling = pooling
        self.head_dropout = head_dropout
        self.seed = seed
        self.model_type = getattr(encoder.config, "model_type", "unknown")
        # `independent` keeps the pristine encoder to copy from; it is never trained itself.
        self.encoder = encoder
        self.encoders = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.task_infos: list[TaskInfo] = []
        self._current: int | None = None
        self._encoder_args = set(inspect.signature(encoder.forward).parameters)
        for param in self.encoder.parameters():
            param.requires_grad_(method == "finetune")

    @classmethod
    def from_encoder(cls, encoder: PreTrainedModel | str, method: str = "finetune", **kwargs: Any) -> DenseContinualModel:
        if isinstance(encoder, str):
            encoder = AutoModel.from_pretrained(encoder, dtype=torch.float32)
        return cls(getattr(encoder, "base_model", encoder), method=method, **kwargs)

    def add_task(self, name: str, num_labels: int, label_names: list[str] | None = None) -> None:
        if name in self.tasks:
            raise ValueError(f"task {name!r} was already added.")
        if self.learning_task is not None:
            raise ValueError(f"task {self.learning_task!r} is still being learned; call finish_task() first.")
        index = len(self.task_infos)
        self.task_infos.append(TaskInfo(name, num_labels, list(label_names or [str(i) for i in range(num_labels)])))
        activation = DEFAULT_HEAD_ACTIVATION.get(self.model_type, "tanh")
        hidden = self.encoder.config.hidden_size
        head = seeded_head(self.seed, name, lambda: TaskHead(hidden, num_labels, self.pooling, activation, self.head_dropout))
        self.heads[str(index)] = head.to(next(self.encoder.parameters()).device)
        if self.method == "independent":
            copy_ = copy.deepcopy(self.encoder)
            for param in copy_.parameters():
                param.requires_grad_(False)
            self.encoders[str(index)] = copy_
        self._current = index

    def begin_training(self) -> None:
        """The one phase of a dense baseline: the encoder (shared or the task's copy) and the head train."""
        index = self.task_index(self.learning_task)
        if self.task_infos[index].state != CREATED:
            raise ValueError(f"task {self.task_infos[index].name!r} is already training.")
        for param in self._encoder_for(index).parameters():
            param.requires_grad_(True)
        for param in self.heads[str(index)].parameters():
            param.requires_grad_(True)
        self.task_infos[index].state = DENSE_PHASE

    def finish_task(self) -> None:
        name = self.learning_task
        if name is None:
            raise ValueError("no task is being learned; nothing to finish.")
        index = self.task_index(name)
        _freeze_to_buffers(self.heads[str(index)])
        if self.method == "independent":
            for param in self.encoders[str(index)].parameters():
                param.requires_grad_(False)
        self.task_infos[index].state = FINISHED

    def discard_task(self) -> None:
        """Forget the task being learned; finished tasks are untouched."""
        name = self.learning_task
        if name is None:
            raise ValueError("no task is being learned; nothing to discard.")
        index = self.task_index(name)
        del self.heads[str(index)]
        if str(index) in self.encoders:
            del self.encoders[str(index)]
        self.task_infos.pop(index)
        self._current = None if not self.task_infos else len(self.task_infos) - 1

    def _encoder_for(self, index: int) -> nn.Module:
        return self.encoders[str(index)] if self.method == "independent" else self.encoder

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, task: str | None = None) -> torch.Tensor:
        encoder = self._encoder_for(self.task_index(task))
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self._encoder_args:
            kwargs["token_type_ids"] = token_type_ids
        return encoder(**kwargs)[0]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, task: str | None = None,
                **_: Any) -> SequenceClassifierOutput:
        index = self.task_index(task)
        hidden = self.encode(input_ids, attention_mask, token_type_ids, task=self.task_infos[index].name)
        logits = self.heads[str(index)](hidden, attention_mask)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(t.numel() for t in self.state_dict().values())
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}")

    def stored_bytes(self) -> int:
        """Bytes a checkpoint of this model needs: the encoder(s) serving tasks and the heads. For
        `independent` that is one copy per task; the pristine encoder it copies from is not counted."""
        skip = "encoder." if self.method == "independent" else None
        return sum(t.numel() * t.element_size() for k, t in self.state_dict().items() if not (skip and k.startswith(skip)))

    def save_pretrained(self, save_directory: str, **_: Any) -> None:
        """Every tensor in one safetensors file (dense baselines are for comparison, not for serving)."""
        os.makedirs(save_directory, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=save_directory, suffix=".tmp")
        os.close(fd)
        save_file(state, tmp)
        os.replace(tmp, os.path.join(save_directory, "dense_model.safetensors"))
