"""Dense baselines: `finetune` (one shared encoder fine-tuned task after task: the forgetting reference),
`independent` (a fresh copy of the pretrained encoder per task: no sharing, one full encoder of storage per task)
and `multitask` (one encoder and every head trained on all tasks' data at once: the usual upper bound)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from ...export import export_sequence_classifier
from ...tasks import freeze_to_buffers, load_into_buffers, thaw_to_parameters
from ..base import ContinualModel, Phase
from .config import DenseConfig

TRAIN = Phase("train", ("dense_learning_rate", "weight_learning_rate"), "weight_epochs", "the whole encoder and the head")
ENCODER_PREFIX = "encoder."


class _DenseModel(ContinualModel):
    config_class = DenseConfig
    supports_export = True

    def phases(self) -> list[Phase]:
        return [TRAIN]

    def _encoder_for(self, index: int) -> nn.Module:
        return self.encoder

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, task: str | None = None) -> torch.Tensor:
        encoder = self._encoder_for(self.task_index(task))
        return encoder(**self._encoder_kwargs(input_ids, attention_mask, token_type_ids))[0]

    def _phase_parameters(self, index: int, phase: str) -> list[nn.Parameter]:
        return list(self._encoder_for(index).parameters())

    def export_task(self, task: str, output_dir: str | None = None) -> PreTrainedModel:
        """The task's encoder (as it computes now) and head as a stock `...ForSequenceClassification`."""
        state = dict(self._encoder_for(self.task_index(task)).state_dict())
        return export_sequence_classifier(self, task, state, output_dir)


class FinetuneModel(_DenseModel):
    """One encoder shared by every task and fine-tuned on each in turn; a head per task."""

    method = "finetune"

    def shared_state(self) -> dict[str, torch.Tensor]:
        return {ENCODER_PREFIX + k: v for k, v in self.encoder.state_dict().items()}

    def load_shared_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        state = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items()}
        try:
            self.encoder.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"the shared encoder tensors do not fit this encoder ({err}); the checkpoint is corrupt.") from None


class IndependentModel(_DenseModel):
    """A fresh copy of the pretrained encoder per task, fine-tuned on that task alone (the upper bound)."""

    method = "independent"
    isolates_tasks = True

    def __init__(self, encoder: PreTrainedModel, config: DenseConfig) -> None:
        super().__init__(encoder, config)
        self.encoders = nn.ModuleDict()  # the pristine `encoder` is only copied from, never trained

    def _encoder_for(self, index: int) -> nn.Module:
        return self.encoders[str(index)]

    def _start_task(self, index: int) -> None:
        encoder = copy.deepcopy(self.encoder)  # the pristine encoder's tensors are buffers: train a thawed copy
        thaw_to_parameters(encoder, self._encoder_parameter_names)
        self.encoders[str(index)] = encoder

    def _finish_task(self, index: int) -> None:
        freeze_to_buffers(self.encoders[str(index)])

    def _discard_task(self, index: int) -> None:
        del self.encoders[str(index)]

    def _task_tensors(self, index: int) -> dict[str, torch.Tensor]:
        return {ENCODER_PREFIX + k: v for k, v in self.encoders[str(index)].state_dict().items()}

    def _install_task_tensors(self, index: int, tensors: dict[str, torch.Tensor], file_name: str) -> None:
        encoder = copy.deepcopy(self.encoder)
        state = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
        if len(state) != len(tensors):
            raise ValueError(f"{file_name}: unexpected tensors {sorted(set(tensors) - {ENCODER_PREFIX + k for k in state})[:4]}.")
        load_into_buffers(encoder, state, f"{file_name} (encoder copy)")
        self.encoders[str(index)] = encoder


class MultitaskModel(FinetuneModel):
    """Every task's data at once: one shared encoder and a head per task, trained jointly (not continual learning;
    the reference continual methods are compared against). The trainer registers every task, then trains them together
    (`learns_jointly`)."""

    method = "multitask"
    learns_jointly = True

    def begin_joint(self) -> list[nn.Parameter]:
        """Make the encoder and every (finished, frozen) head trainable; returns the heads' parameters."""
        heads: list[nn.Parameter] = []
        for head in self.heads.values():
            thaw_to_parameters(head, [n for n, _ in head.named_buffers()])
            heads += list(head.parameters())
        for param in [*self.encoder.parameters(), *heads]:
            param.requires_grad_(True)
        return heads

    def end_joint(self) -> None:
        """Freeze the heads again and the encoder's gradients: the trained model is final."""
        for head in self.heads.values():
            freeze_to_buffers(head)
        for param in self.encoder.parameters():
            param.requires_grad_(False)
