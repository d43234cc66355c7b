"""`LoraContinualModel`: one PEFT LoRA adapter plus one head per task on the frozen shared encoder.

Every task gets its own adapter (PEFT adapter name `task<index>`) injected in place into the encoder's
targeted `nn.Linear` layers (`peft.inject_adapter_in_model`), so `self.encoder` stays the plain
transformers model, its layers now `peft` LoRA layers holding one adapter per task.

- `forward(..., task=X)` activates X's adapter alone (`peft.functional.set_adapter`), so the shared base
  weights plus X's update compute X's features.
- `finish_task` turns the task's `lora_A` / `lora_B` weights into buffers: no optimizer, however built,
  can reach them, and the base weights were frozen from the start: zero forgetting by construction.
- A checkpoint holds per task its head and `lora.<module>.lora_A.weight` / `lora.<module>.lora_B.weight`
  (no adapter name inside) in `values_dtype` (float16 by default: rounded at finish, so the live adapter is
  exactly what is stored), which `install_task` loads into a fresh adapter in the encoder's dtype; the
  encoder itself is not stored (it never changes).
- `export_task` adds the task's B @ A * scaling (PEFT's `get_delta_weight`) to a copy of the base weights
  and writes a stock `...ForSequenceClassification`; the model itself is not changed.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import replace

import torch
from peft import LoraConfig, PeftConfig, inject_adapter_in_model
from peft.functional import delete_adapter, set_adapter
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

from ...export import export_sequence_classifier
from ...targets import target_linears
from ...tasks import freeze_to_buffers, load_into_buffers, module_device, seeded, stored_values
from ..base import ContinualModel, Phase
from .config import LoraMethodConfig

LORA_PREFIX = "lora."
ADAPTER_PARTS = ("lora_A", "lora_B")
TRAIN = Phase("train", ("adapter_learning_rate",), "weight_epochs", "the task's LoRA adapter (lora_A, lora_B) and its head")
BASE_LAYER = ".base_layer."


@contextmanager
def _quiet_peft():
    # A second adapter on the same model, and deleting the active one (a discarded task), are what we want; PEFT warns.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted.*")
        yield


def inject_adapter(peft_config: PeftConfig, encoder: nn.Module, adapter_name: str) -> None:
    """Inject a PEFT adapter into `encoder` in place (its modules become PEFT layers; the object stays the same)."""
    # PEFT reads the device from the model's first parameter; an isolating model's shared tensors are all
    # buffers, so a placeholder parameter stands in during the injection.
    probe = None
    if next(encoder.parameters(), None) is None:
        probe = nn.Parameter(torch.empty(0, device=module_device(encoder)), requires_grad=False)
        encoder.register_parameter("_peft_device_probe", probe)
    try:
        with _quiet_peft():
            inject_adapter_in_model(peft_config, encoder, adapter_name=adapter_name)
    finally:
        if probe is not None:
            del encoder._parameters["_peft_device_probe"]


def plain_encoder_state(encoder: nn.Module, base_keys: list[str]) -> dict[str, torch.Tensor]:
    """The encoder's own tensors under the names the plain (un-injected) encoder gives them, in `base_keys` order:
    a PEFT layer's `<module>.base_layer.<tensor>` becomes `<module>.<tensor>`; adapter tensors are left out."""
    state = encoder.state_dict()
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.replace(BASE_LAYER, ".")
        if name != key or name not in plain:
            plain[name] = value
    missing = [k for k in base_keys if k not in plain]
    if missing:
        raise ValueError(f"the encoder lost tensors {missing[:4]} of its plain state; was it changed outside this model?")
    return {k: plain[k] for k in base_keys}


def tuner_layers(encoder: nn.Module, layer_class: type = BaseTunerLayer) -> dict[str, nn.Module]:
    """Module name (within the encoder) -> PEFT layer of `layer_class`."""
    return {n: m for n, m in encoder.named_modules() if isinstance(m, layer_class)}


class LoraContinualModel(ContinualModel):
    """A frozen shared encoder with one PEFT LoRA adapter per task, plus per-task heads (zero forgetting)."""

    method = "lora"
    config_class = LoraMethodConfig
    isolates_tasks = True
    supports_export = True

    def __init__(self, encoder: PreTrainedModel, config: LoraMethodConfig) -> None:
        super().__init__(encoder, config)  # fingerprints the plain encoder before PEFT touches it
        targets = config.resolved_target_modules(self.model_type)
        self.target_module_names = target_linears(self.encoder, targets, self.model_type)

    def phases(self) -> list[Phase]:
        return [TRAIN]

    # --- adapters --------------------------------------------------------------------------------
    @staticmethod
    def adapter_name(index: int) -> str:
        return f"task{index}"

    def _peft_config(self) -> LoraConfig:
        cfg = self.config
        return LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(self.target_module_names), bias="none")

    def lora_layers(self) -> dict[str, LoraLayer]:
        """Module name (within the encoder) -> its PEFT LoRA layer (empty before the first task)."""
        return tuner_layers(self.encoder, LoraLayer)

    def _adapter_modules(self, index: int) -> dict[str, nn.Module]:
        """`<module>.lora_A` / `<module>.lora_B` -> the task's own `nn.Linear` of that part."""
        name = self.adapter_name(index)
        modules = {}
        for module_name, layer in self.lora_layers().items():
            for part in ADAPTER_PARTS:
                parts = getattr(layer, part)
                if name in parts:
                    modules[f"{module_name}.{part}"] = parts[name]
        return modules

    def _add_adapter(self, index: int) -> None:
        name = self.adapter_name(index)
        # lora_A's random init is drawn from the task's own seed (the global RNG is left alone).
        seeded(self.config.seed, self.task_infos[index].name, lambda: inject_adapter(self._peft_config(), self.encoder, name))
        if len(self._adapter_modules(index)) != 2 * len(self.target_module_names):
            raise RuntimeError(f"PEFT injected adapter {name!r} into {len(self._adapter_modules(index)) // 2} layers, "
                               f"expected {len(self.target_module_names)}.")

    def _remove_adapter(self, index: int) -> None:
        name = self.adapter_name(index)
        if not self.lora_layers():
            return
        with _quiet_peft():
            delete_adapter(self.encoder, name, prefix="lora_", layer_cls=LoraLayer)
        getattr(self.encoder, "peft_config", {}).pop(name, None)

    def _activate(self, index: int) -> None:
        """Make task `index`'s adapter the only active one. PEFT's `set_adapter` also switches `requires_grad`;
        the trainable flags (the contract's business) are put back as they were."""
        name = self.adapter_name(index)
        layers = list(self.lora_layers().values())
        if not layers or list(layers[0].active_adapters) == [name]:
            return
        flags = [(p, p.requires_grad) for p in self.encoder.parameters()]
        set_adapter(self.encoder, name, layer_cls=LoraLayer)
        for param, flag in flags:
            param.requires_grad_(flag)

    # --- hooks -----------------------------------------------------------------------------------
    def _start_task(self, index: int) -> None:
        try:
            self._add_adapter(index)
        except BaseException:
            self._remove_adapter(index)
            raise

    def _phase_parameters(self, index: int, phase: str) -> list[nn.Parameter]:
        return [p for module in self._adapter_modules(index).values() for p in module.parameters()]

    def _finish_task(self, index: int) -> None:
        for module in self._adapter_modules(index).values():
            self._round_values(module)
            freeze_to_buffers(module)

    def _values_dtype(self) -> torch.dtype | None:
        return getattr(torch, self.config.values_dtype) if self.config.values_dtype else None

    def _round_values(self, module: nn.Module) -> None:
        """Round an adapter's tensors through `values_dtype`, in place and in the encoder's dtype."""
        dtype = self._values_dtype()
        if dtype is not None:
            with torch.no_grad():
                for tensor in list(module.parameters()) + list(module.buffers()):
                    tensor.copy_(tensor.to(dtype))

    def keep_values_in(self, dtype: str | None) -> None:
        """Keep and store every task's adapter in `dtype` (float16 | bfloat16 | None: exact) from now on; the
        finished tasks' adapters are rounded now (to shrink a checkpoint trained with exact adapters)."""
        if self.learning_task is not None:
            raise ValueError(f"task {self.learning_task!r} is being learned; finish or discard it before keep_values_in().")
        self.config = replace(self.config, values_dtype=dtype)  # validates dtype
        for index in range(len(self.finished_tasks)):
            for module in self._adapter_modules(index).values():
                self._round_values(module)

    def _discard_task(self, index: int) -> None:
        self._remove_adapter(index)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, task: str | None = None) -> torch.Tensor:
        self._activate(self.task_index(task))
        return self.encoder(**self._encoder_kwargs(input_ids, attention_mask, token_type_ids))[0]

    # --- checkpoints -----------------------------------------------------------------------------
    def base_state(self) -> dict[str, torch.Tensor]:
        return plain_encoder_state(self.encoder, self._base_keys)

    def _task_tensors(self, index: int) -> dict[str, torch.Tensor]:
        tensors = {}
        dtype = self._values_dtype()
        for path, module in self._adapter_modules(index).items():
            for key, live in module.state_dict().items():
                tensors[f"{LORA_PREFIX}{path}.{key}"] = stored_values(live, dtype, f"adapter values {path}.{key} (task {index})")
        return tensors

    def _install_task_tensors(self, index: int, tensors: dict[str, torch.Tensor], file_name: str) -> None:
        self._add_adapter(index)
        try:
            modules = self._adapter_modules(index)
            expected = {f"{LORA_PREFIX}{path}.{k}" for path, module in modules.items() for k in module.state_dict()}
            if set(tensors) != expected:
                missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
                raise ValueError(f"{file_name}: the LoRA tensors do not fit this model's adapters (missing {missing[:4]}, "
                                 f"unexpected {extra[:4]}); was it saved with other target_modules?")
            for path, module in modules.items():
                prefix = f"{LORA_PREFIX}{path}."
                own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                live_dtype = next(iter(module.state_dict().values())).dtype  # as PEFT built it, as while training
                stored_dtype = self._values_dtype() or live_dtype
                for key, value in own.items():
                    if value.dtype != stored_dtype:
                        raise ValueError(f"{file_name}: {prefix}{key} is {value.dtype}, but values_dtype "
                                         f"{self.config.values_dtype!r} stores {stored_dtype}; the checkpoint is corrupt "
                                         "or its config was edited.")
                # The stored numbers widened exactly: computed in the dtype training used.
                load_into_buffers(module, {k: v.to(live_dtype) for k, v in own.items()},
                                  f"{file_name} ({path} of task {self.task_infos[index].name!r})")
        except BaseException:
            self._remove_adapter(index)
            raise

    def export_task(self, task: str, output_dir: str | None = None) -> PreTrainedModel:
        """The task's adapter merged into a copy of the base weights, with its head, as a stock `...ForSequenceClassification`."""
        index = self.task_index(task)
        name = self.adapter_name(index)
        state = dict(self.base_state())
        with torch.no_grad():
            for module_name, layer in self.lora_layers().items():
                if name in layer.lora_A:
                    key = f"{module_name}.weight"
                    state[key] = state[key] + layer.get_delta_weight(name).to(state[key].dtype)
        return export_sequence_classifier(self, task, state, output_dir)
