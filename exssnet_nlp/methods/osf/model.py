"""`OSFContinualModel`: PEFT's Orthogonal Subspace Fine-tuning (OSF) of one shared encoder, a head per task.

How a task is learned, as PEFT's OSF guide prescribes for continual learning:

1. `add_task`: inject a fresh OSF adapter (`peft.OSFConfig`, in place) into the targeted linears of the
   encoder *as the earlier tasks left it*. PEFT splits each weight by SVD into its top `r` singular
   directions (frozen: what earlier tasks, and pre-training, rely on most) and the rest, which is
   trained (U_low, S_low, V_low); the gradients of U_low / V_low are projected off the frozen directions.
   Task i freezes `r_i = effective_rank + i * rank_increment` directions (capped at min_dim - 1), so the
   preserved subspace grows task after task.
2. `finish_task`: merge the update into the weights (PEFT's `merge`) and unload the adapter: the encoder
   is a plain transformers model again, with new weights every task shares.

So there is no per-task encoder state: a checkpoint holds the targeted weights once (`shared_state`,
`encoder.<module>.weight`), each task's head, and per task the ranks it froze (`task_metadata`). Earlier
tasks' outputs do change when a later task trains (their heads are frozen buffers, the encoder is not):
OSF reduces forgetting, it does not rule it out (`isolates_tasks = False`). Two reasons: the frozen
directions are the top singular directions, not exactly the ones an earlier task used, and AdamW's
per-element scaling (and weight decay) moves the factors out of the projected subspace a little.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from peft import OSFConfig
from peft.tuners.osf import OSFLayer
from torch import nn
from transformers import PreTrainedModel

from ...export import export_sequence_classifier
from ...targets import replace_submodule, target_linears
from ..base import ContinualModel, Phase
from ..lora.model import inject_adapter, plain_encoder_state, tuner_layers
from .config import OSFMethodConfig

ENCODER_PREFIX = "encoder."
ADAPTER = "osf"  # one OSF adapter at a time: the one of the task being learned
TRAIN = Phase("train", ("osf_learning_rate", "weight_learning_rate"), "weight_epochs",
              "the low singular factors (U_low, S_low, V_low) of every targeted weight, and the head")


def _shape_key(weight: torch.Tensor) -> str:
    return "x".join(str(d) for d in weight.shape)


class OSFContinualModel(ContinualModel):
    """One encoder shared by every task, each task trained by PEFT OSF orthogonally to the directions kept so far."""

    method = "osf"
    config_class = OSFMethodConfig
    isolates_tasks = False
    supports_export = True

    def __init__(self, encoder: PreTrainedModel, config: OSFMethodConfig) -> None:
        super().__init__(encoder, config)  # fingerprints the plain encoder before PEFT touches it
        targets = config.resolved_target_modules(self.model_type)
        self.target_module_names = target_linears(self.encoder, targets, self.model_type)
        small = [n for n in self.target_module_names if min(self._weight(n).shape) < 2]
        if small:
            raise ValueError(f"OSF needs targeted weights with both dimensions >= 2 (one direction frozen, one trained); "
                             f"{small[:4]} are smaller. Pick other target_modules.")
        self._task_ranks: dict[str, dict[str, int]] = {}  # task name -> {weight shape: frozen directions}

    def phases(self) -> list[Phase]:
        return [TRAIN]

    # --- the OSF adapter --------------------------------------------------------------------------
    def _weight(self, name: str) -> nn.Parameter:
        """The targeted linear `name`'s weight (that of the base layer while an OSF adapter wraps it)."""
        module = self.encoder.get_submodule(name)
        if isinstance(module, OSFLayer):
            module = module.get_base_layer()
        return module.weight

    def osf_layers(self) -> dict[str, OSFLayer]:
        """Module name (within the encoder) -> its PEFT OSF layer (only while a task is being learned)."""
        return tuner_layers(self.encoder, OSFLayer)

    def preserved_ranks(self, index: int) -> dict[str, int]:
        """Targeted module -> the singular directions task `index` keeps frozen."""
        return {n: self.config.preserved_rank(index, min(self._weight(n).shape)) for n in self.target_module_names}

    def _ranks_by_shape(self, index: int) -> dict[str, int]:
        return {_shape_key(self._weight(n)): rank for n, rank in self.preserved_ranks(index).items()}

    def _inject(self, index: int) -> None:
        ranks = self.preserved_ranks(index)
        # Exact per-module ranks through rank_pattern (PEFT re.search-es each pattern in the module's name).
        peft_config = OSFConfig(target_modules=list(self.target_module_names), effective_rank=1,
                                rank_pattern={f"^{re.escape(n)}$": r for n, r in ranks.items()})
        inject_adapter(peft_config, self.encoder, ADAPTER)
        layers = self.osf_layers()
        if sorted(layers) != sorted(self.target_module_names):
            raise RuntimeError(f"PEFT injected OSF into {len(layers)} layers, expected {len(self.target_module_names)}.")

    def _unload(self, merge: bool) -> None:
        """Put the plain linears back, with the task's update merged into their weights when `merge`."""
        with torch.no_grad():
            for name, layer in self.osf_layers().items():
                if merge:
                    layer.merge(adapter_names=[ADAPTER])
                replace_submodule(self.encoder, name, layer.get_base_layer())
        if hasattr(self.encoder, "peft_config"):
            del self.encoder.peft_config  # PEFT's bookkeeping copy: the encoder is plain again

    # --- hooks -----------------------------------------------------------------------------------
    def _start_task(self, index: int) -> None:
        try:
            self._inject(index)
        except BaseException:
            self._unload(merge=False)
            raise
        self._task_ranks[self.task_infos[index].name] = self._ranks_by_shape(index)

    def _phase_parameters(self, index: int, phase: str) -> list[nn.Parameter]:
        return [p for layer in self.osf_layers().values() for p in layer.osf_svd_params[ADAPTER].parameters()]

    def _finish_task(self, index: int) -> None:
        self._unload(merge=True)

    def _discard_task(self, index: int) -> None:
        self._unload(merge=False)
        self._task_ranks.pop(self.task_infos[index].name, None)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, task: str | None = None) -> torch.Tensor:
        return self.encoder(**self._encoder_kwargs(input_ids, attention_mask, token_type_ids))[0]

    # --- checkpoints -----------------------------------------------------------------------------
    def base_state(self) -> dict[str, torch.Tensor]:
        return plain_encoder_state(self.encoder, self._base_keys)

    def shared_state(self) -> dict[str, torch.Tensor]:
        """The targeted weights as the finished tasks left them (nothing else in the encoder ever changes)."""
        return {f"{ENCODER_PREFIX}{n}.weight": self._weight(n).detach() for n in self.target_module_names}

    def load_shared_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        if self.learning_task is not None:
            raise ValueError(f"task {self.learning_task!r} is being learned; load the shared weights into a model without one.")
        expected = {f"{ENCODER_PREFIX}{n}.weight": n for n in self.target_module_names}
        if set(tensors) != set(expected):
            missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
            raise ValueError(f"the shared OSF weights do not fit this model (missing {missing[:4]}, unexpected {extra[:4]}); "
                             "was the checkpoint saved with other target_modules, or is it corrupt?")
        with torch.no_grad():
            for key, name in expected.items():
                weight, value = self._weight(name), tensors[key]
                if tuple(value.shape) != tuple(weight.shape):
                    raise ValueError(f"shared tensor {key} has shape {tuple(value.shape)}, expected {tuple(weight.shape)}; "
                                     "the checkpoint belongs to another encoder or is corrupt.")
                weight.copy_(value.to(dtype=weight.dtype, device=weight.device))

    def task_metadata(self, task: str) -> dict[str, Any]:
        """The singular directions the task kept frozen while it learned, per targeted weight shape."""
        return {"effective_rank": dict(self._task_ranks[self.task_infos[self.task_index(task)].name])}

    def _install_task_metadata(self, index: int, metadata: dict[str, Any], file_name: str) -> None:
        ranks = metadata.get("effective_rank")
        if not (isinstance(ranks, dict) and all(isinstance(k, str) and isinstance(v, int) for k, v in ranks.items())):
            raise ValueError(f"{file_name}: the task's metadata lacks its OSF ranks ('effective_rank': {{shape: int}}); "
                             "the checkpoint's config JSON is corrupt or was saved by another method.")
        self._task_ranks[self.task_infos[index].name] = dict(ranks)

    def capacity(self) -> dict[str, dict[str, float]]:
        """Per targeted layer: the fraction of its singular directions the next task will keep frozen (`used`), and the rest."""
        index = len(self.finished_tasks)
        result = {}
        for name, rank in self.preserved_ranks(index).items():
            used = rank / min(self._weight(name).shape)
            result[name] = {"used": used, "free": 1.0 - used}
        return result

    def export_task(self, task: str, output_dir: str | None = None) -> PreTrainedModel:
        """The encoder as the finished tasks left it, with the task's head, as a stock `...ForSequenceClassification`."""
        return export_sequence_classifier(self, task, dict(self.base_state()), output_dir)
