"""`ExSSNetModel`: the supermask methods (`exssnet`, `ssnet`, `supsup`) on a BERT-family encoder.

Learn a task with `add_task` -> `begin_phase("mask")` -> (`begin_phase("weight")`) -> `finish_task`.
After `finish_task`, nothing the task uses can change: its mask is packed bits in a buffer, its head is
buffers, and later tasks train only weights outside every earlier mask (`exssnet`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ...export import export_sequence_classifier
from ...kkt import KKTConfig, KKTResult, run_kkt, vote_topk
from ...masks import deflate_packed, inflate_packed, masks_digest, packed_size, topk_mask_rows, unpack_bits
from ...targets import replace_submodule, target_linears
from ...tasks import pool, stored_values, task_seed
from ..base import ContinualModel, Phase
from .config import ExSSNetConfig
from .layer import MASK_PHASE, SHARED_VIEW, WEIGHT_PHASE, SupermaskLinear, TaskLayerNorm

MASK_PREFIX, VALUES_PREFIX, NORM_PREFIX = "mask.", "values.", "norm."
# A later task's mask mostly repeats the previous task's (every task's scores start from the weights'
# magnitudes): `maskxor.<module>`, its bits XOR the previous task's deflated, measured 37-48% of `mask.<module>`,
# the bits alone deflated (MiniLM, density 0.1). Each layer stores the shorter; tasks are installed in order,
# so the reader has the previous mask (so one task's `task_state` installs only after the task it followed).
MASK_XOR_PREFIX = "maskxor."
# A task's file is coded against the tasks before it (XOR streams, values at the weights no earlier mask holds):
# its metadata keeps the chained digest of their masks, and installing it after other tasks is refused.
EARLIER_MASKS_KEY = "earlier_masks_sha256"

MASK = Phase(MASK_PHASE, ("mask_learning_rate",), "mask_epochs", "the task's scores (its mask), its head and its norms",
             optimizer="mask_optimizer", lr_scheduler="mask_lr_scheduler")
WEIGHT = Phase(WEIGHT_PHASE, ("weight_learning_rate",), "weight_epochs",
               "the weights in the task's mask that no earlier task holds (exssnet) or all of them (ssnet), head, norms")


class ExSSNetModel(ContinualModel):
    """A shared encoder whose targeted linears hold one supermask per task, plus per-task heads."""

    config_class = ExSSNetConfig
    supports_kkt = True
    supports_export = True
    supports_task_inference = True

    def __init__(self, encoder: PreTrainedModel, config: ExSSNetConfig) -> None:
        super().__init__(encoder, config)
        # (layer name, task index) -> the stored (deflated) mask: finished masks never change, so each is
        # compressed once, not on every save.
        self._stored_masks: dict[tuple[str, int], tuple[str, torch.Tensor]] = {}
        self._digests: list[str] = []  # task i: digest of finished masks 0..i (finished masks never change)
        self._inject()

    @property
    def method(self) -> str:  # type: ignore[override]
        return self.config.method

    @property
    def isolates_tasks(self) -> bool:  # type: ignore[override]
        return self.config.method != "ssnet"

    @classmethod
    def config_for_saved_base(cls, config: ExSSNetConfig) -> ExSSNetConfig:
        return replace(config, weight_init="pretrained")

    def _inject(self) -> None:
        targets = self.config.resolved_target_modules(self.model_type)
        self.target_module_names = target_linears(self.encoder, targets, self.model_type)
        for name in self.target_module_names:
            values_dtype = getattr(torch, self.config.values_dtype) if self.config.values_dtype else None
            layer = SupermaskLinear(self.encoder.get_submodule(name), self.config.density, self.config.topk_method,
                                    values_dtype)
            if self.config.weight_init == "signed_constant":
                with torch.no_grad():
                    std = layer.weight.float().std()
                    layer.weight.copy_((torch.sign(layer.weight.float()) * std).to(layer.weight.dtype))
            replace_submodule(self.encoder, name, layer)
        if self.config.task_norms:
            for name, module in list(self.encoder.named_modules()):
                if isinstance(module, nn.LayerNorm):
                    replace_submodule(self.encoder, name, TaskLayerNorm(module))
            if not self.task_norm_layers():
                raise ValueError(f"task_norms=True, but this {self.model_type} encoder has no nn.LayerNorm to copy per task.")

    def supermask_layers(self) -> dict[str, SupermaskLinear]:
        """Module name (within the encoder) -> its `SupermaskLinear`."""
        return {n: m for n, m in self.encoder.named_modules() if isinstance(m, SupermaskLinear)}

    def task_norm_layers(self) -> dict[str, TaskLayerNorm]:
        """Module name (within the encoder) -> its `TaskLayerNorm` (empty unless `config.task_norms`)."""
        return {n: m for n, m in self.encoder.named_modules() if isinstance(m, TaskLayerNorm)}

    def _layer_list(self) -> list[SupermaskLinear | TaskLayerNorm]:
        # Built once: walking every module on each forward cost ~10% of GPU fp32 inference.
        if getattr(self, "_layers_cache", None) is None:
            self._layers_cache = [*self.supermask_layers().values(), *self.task_norm_layers().values()]
        return self._layers_cache

    # --- phases --------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        return [MASK] if self.config.method == "supsup" else [MASK, WEIGHT]

    def begin_mask_phase(self) -> None:
        """Train the current task's scores and head."""
        self.begin_phase(MASK_PHASE)

    def begin_weight_phase(self) -> None:
        """Fix the mask; train the weights it may own (exclusive ones for exssnet) and the head."""
        if self.config.method == "supsup":
            raise ValueError("method='supsup' has no weight phase; call finish_task() after the mask phase.")
        self.begin_phase(WEIGHT_PHASE)

    def _start_task(self, index: int) -> None:
        name = self.task_infos[index].name
        generator = torch.Generator().manual_seed(task_seed(self.config.seed, name))
        for layer in self.supermask_layers().values():
            layer.start_task(index, self.config.score_init, generator, self.config.reuse_score_scale)
        for norm in self.task_norm_layers().values():
            norm.start_task(index)

    def _enter_phase(self, index: int, phase: str) -> None:
        for layer in self.supermask_layers().values():
            if phase == MASK_PHASE:
                layer.begin_mask_phase()
            else:
                layer.begin_weight_phase(exclusive=self.config.method != "ssnet")

    def _phase_parameters(self, index: int, phase: str) -> list[nn.Parameter]:
        params = []
        for layer in self.supermask_layers().values():
            tensor = layer.scores if phase == MASK_PHASE else layer.exclusive_values
            if tensor is not None:
                params.append(tensor)
        for norm in self.task_norm_layers().values():  # a task's own norms train in both phases
            params += [norm.learning_weight, norm.learning_bias]
        return params

    def _finish_task(self, index: int) -> None:
        for layer in self._layer_list():
            layer.finish_task()
        if self.config.method != "supsup":  # a task finished without a weight phase stores its values too
            self._round_owned_values(index)

    def _round_owned_values(self, index: int) -> None:
        """Round the values task `index` stores (the weights it owns) through each layer's `values_dtype`."""
        with torch.no_grad():
            for layer in self.supermask_layers().values():
                if layer.values_dtype is not None:
                    positions = layer.owned_mask(index).reshape(-1).nonzero().squeeze(1)
                    flat = layer.weight.view(-1)
                    flat[positions] = layer.frozen_values(flat[positions])

    def keep_values_in(self, dtype: str | None) -> None:
        """Keep and store every task's trained values in `dtype` (float16 | bfloat16 | None: exact) from now on; the
        finished tasks' values are rounded now, as `values_dtype` rounds a task's when it finishes (to shrink a
        checkpoint trained with exact values; measure the effect with benchmarks/values_dtype.py)."""
        if self.learning_task is not None:
            raise ValueError(f"task {self.learning_task!r} is being learned; finish or discard it before keep_values_in().")
        self.config = replace(self.config, values_dtype=dtype)  # validates dtype
        for layer in self.supermask_layers().values():
            layer.values_dtype = getattr(torch, dtype) if dtype else None
        if self.config.method != "supsup":
            for index in range(len(self.finished_tasks)):
                self._round_owned_values(index)

    def _discard_task(self, index: int) -> None:
        for layer in self._layer_list():
            layer.discard_task()

    # --- masks -----------------------------------------------------------------------------------
    def task_mask(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """Module name -> bool mask of `task` (finished, or the current mask of the one being learned)."""
        index = self.task_index(task)
        return {n: layer.task_mask(index) for n, layer in self.supermask_layers().items()}

    def exclusive_mask(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """Module name -> the weights `task` owns: its mask minus the union of earlier tasks' masks."""
        index = self.task_index(task)
        return {n: layer.owned_mask(index) for n, layer in self.supermask_layers().items()}

    def capacity(self) -> dict[str, dict[str, float]]:
        """Per layer: fraction of weights used by some finished task, and free for new ones."""
        stats = {}
        for name, layer in self.supermask_layers().items():
            used = float(layer.union_mask(layer.num_finished).float().mean()) if layer.num_finished else 0.0
            stats[name] = {"used": used, "free": 1.0 - used, "density": layer.k / layer.weight.numel()}
        return stats

    # --- KKT -----------------------------------------------------------------------------------------
    def knowledge_transfer(self, encodings: dict[str, Any], labels: Any, config: KKTConfig) -> KKTResult:
        """KKT: score every finished task's subnetwork on the new task's data; start its mask from the best."""
        task = self.learning_task
        return run_kkt(self, encodings, labels, self.task_info(task).num_labels if task else 0, config)

    def start_from_tasks(self, sources: Sequence[str], weights: Sequence[float], generator: torch.Generator) -> None:
        """Start the learning task's mask as the sources' masks (one) or their weighted top-k vote (several).

        Only the learning task's scores change (`SupermaskLinear.set_scores_from_mask`); with `task_norms` its
        norms start as a copy of the heaviest source's (first on ties).
        """
        source_indices = [self.task_index(s) for s in sources]
        for layer in self.supermask_layers().values():
            if len(source_indices) == 1:
                mask = layer.task_mask(source_indices[0])
            else:
                votes = torch.zeros(layer.weight.shape, dtype=torch.float32, device=layer.weight.device)
                for j, w in zip(source_indices, weights, strict=True):
                    votes += w * layer.task_mask(j)
                mask = vote_topk(votes, layer.k, generator)
            layer.set_scores_from_mask(mask)
        heaviest = source_indices[max(range(len(weights)), key=lambda j: (weights[j], -j))]
        with torch.no_grad():
            for norm in self.task_norm_layers().values():
                weight, bias = norm.task_affine(heaviest)
                norm.learning_weight.copy_(weight)
                norm.learning_bias.copy_(bias)

    # --- checkpoint tensors ----------------------------------------------------------------------------
    def _task_tensors(self, index: int) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for name, layer in self.supermask_layers().items():
            key, tensors[key] = self._stored_mask(name, layer, index)
            if self.config.method != "supsup":
                # Current values, not the ones at finish time: for ssnet later tasks may have retrained them.
                positions = layer.owned_mask(index).reshape(-1).nonzero().squeeze(1)
                tensors[VALUES_PREFIX + name] = stored_values(layer.weight.detach().reshape(-1)[positions],
                                                              layer.values_dtype, f"values of {name} (task {index})")
        for name, norm in self.task_norm_layers().items():
            weight, bias = norm.task_affine(index)
            tensors[f"{NORM_PREFIX}{name}.weight"] = weight.detach()
            tensors[f"{NORM_PREFIX}{name}.bias"] = bias.detach()
        return tensors

    def _stored_mask(self, name: str, layer: SupermaskLinear, index: int) -> tuple[str, torch.Tensor]:
        """(tensor name, stored bytes) of a finished mask: alone, or XOR the previous task's when that is shorter."""
        key = (name, index)
        if key not in self._stored_masks:
            alone = deflate_packed(layer.packed_mask(index))
            delta = deflate_packed(layer.packed_mask(index), layer.packed_mask(index - 1)) if index > 0 else alone
            self._stored_masks[key] = (MASK_XOR_PREFIX, delta) if delta.numel() < alone.numel() else (MASK_PREFIX, alone)
        prefix, data = self._stored_masks[key]
        return prefix + name, data.clone()  # a copy: a caller editing task_state() must not change later saves

    def _masks_digest(self, index: int) -> str:
        """Chained digest of finished tasks 0..`index`'s masks ("" before the first task)."""
        layers = sorted(self.supermask_layers().items())
        for i in range(len(self._digests), index + 1):
            self._digests.append(masks_digest(((n, layer.packed_mask(i)) for n, layer in layers), self._digests[i - 1] if i else ""))
        return self._digests[index] if index >= 0 else ""

    def task_metadata(self, task: str) -> dict[str, Any]:
        return {EARLIER_MASKS_KEY: self._masks_digest(self.task_index(task) - 1)}

    def _install_task_metadata(self, index: int, metadata: dict[str, Any], file_name: str) -> None:
        saved = metadata.get(EARLIER_MASKS_KEY)  # absent from checkpoints saved before the key existed
        if saved is not None and saved != self._masks_digest(index - 1):
            raise ValueError(f"{file_name}: the task was saved after other tasks than the {index} this model holds (their "
                             "masks' digest differs); install the tasks in the order they were saved, from one checkpoint.")

    def _install_task_tensors(self, index: int, tensors: dict[str, torch.Tensor], file_name: str) -> None:
        """Register the saved masks, write the owned values into place, keep the norms: no replay of training."""
        layers, norms = self.supermask_layers(), self.task_norm_layers()
        # Each layer's mask under one of its two names (see MASK_XOR_PREFIX); a first task has no previous mask.
        xor = {n for n in layers if MASK_XOR_PREFIX + n in tensors and index > 0}
        expected = {(MASK_XOR_PREFIX if n in xor else MASK_PREFIX) + n for n in layers}
        expected |= {f"{NORM_PREFIX}{n}.{leaf}" for n in norms for leaf in ("weight", "bias")}
        if self.config.method != "supsup":
            expected |= {VALUES_PREFIX + n for n in layers}
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            hint = (" `maskxor.` masks are coded against the previous task's: a first task never has them; install the "
                    "tasks in the order they were saved." if index == 0 and any(k.startswith(MASK_XOR_PREFIX) for k in tensors) else "")
            raise ValueError(f"{file_name}: tensors do not match the model (missing {missing[:4]}, unexpected {extra[:4]}); "
                             f"the checkpoint is corrupt, or was saved with other target_modules, task_norms or encoder.{hint}")
        # Everything is checked before anything changes: a bad file leaves the model as it was.
        plan = []
        for name, layer in layers.items():
            stored = tensors[(MASK_XOR_PREFIX if name in xor else MASK_PREFIX) + name]
            need = packed_size(layer.weight.numel())
            reference = layer.packed_mask(index - 1) if name in xor else None
            try:
                packed = inflate_packed(stored, need, reference)
            except ValueError as err:
                raise ValueError(f"{file_name}: mask of {name} (layer {tuple(layer.weight.shape)}): {err}") from None
            mask = unpack_bits(packed, layer.weight.shape).to(layer.weight.device)
            kept = int(mask.sum())
            if kept != layer.k:  # every mask keeps exactly k = round(density * numel) weights
                hint = (" It is stored as XOR the previous task's mask: install the tasks in the order they were saved."
                        if name in xor else "")
                raise ValueError(f"{file_name}: mask of {name} keeps {kept} weights; density {self.config.density} keeps "
                                 f"exactly {layer.k}. The checkpoint is corrupt.{hint}")
            values = tensors.get(VALUES_PREFIX + name)
            positions = None
            if values is not None:
                positions = (mask & ~layer.union_mask(index)).reshape(-1).nonzero().squeeze(1)
                dtype = layer.values_dtype or layer.weight.dtype
                if values.dim() != 1 or values.numel() != positions.numel() or values.dtype != dtype:
                    raise ValueError(f"{file_name}: values of {name} should be {positions.numel()} {dtype} "
                                     f"entries, got {tuple(values.shape)} {values.dtype}; the checkpoint is corrupt.")
            plan.append((name, layer, stored, packed, positions, values))
        for name, norm in norms.items():
            for leaf in ("weight", "bias"):
                value = tensors[f"{NORM_PREFIX}{name}.{leaf}"]
                if tuple(value.shape) != tuple(norm.weight.shape):
                    raise ValueError(f"{file_name}: norm {name}.{leaf} has shape {tuple(value.shape)}, the encoder's "
                                     f"{tuple(norm.weight.shape)}; the checkpoint belongs to another encoder or is corrupt.")
        with torch.no_grad():
            for name, layer, stored, packed, positions, values in plan:
                if positions is not None:
                    layer.weight.view(-1)[positions] = values.to(device=layer.weight.device, dtype=layer.weight.dtype)
                layer.add_finished_mask(packed)
                # Kept as read, so that saving again does not re-compress: a stream of the first task, or an XOR
                # stream. A later task's mask stored alone is coded again on save (its XOR may be shorter).
                if stored.numel() < packed.numel() and (index == 0 or name in xor):
                    self._stored_masks[(name, index)] = (MASK_XOR_PREFIX if name in xor else MASK_PREFIX, stored.cpu().clone())
        for name, norm in norms.items():
            norm.add_finished_affine(tensors[f"{NORM_PREFIX}{name}.weight"], tensors[f"{NORM_PREFIX}{name}.bias"])

    def base_state(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under plain names; per-task buffers and a learning task's tensors are left out."""
        per_task = {**self.supermask_layers(), **self.task_norm_layers()}
        tensors = {}
        for name, tensor in self.encoder.state_dict().items():
            owner, _, leaf = name.rpartition(".")
            if owner in per_task and leaf not in ("weight", "bias"):
                continue
            tensors[name] = tensor
        return tensors

    # --- forward ---------------------------------------------------------------------------------------
    def _activate(self, index: int) -> None:
        for layer in self._layer_list():
            layer.active_task = index

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, task: str | None = None) -> torch.Tensor:
        """Last hidden state of the encoder under `task`'s mask."""
        self._activate(self.task_index(task))
        stepped = self._set_step_masks() if torch.is_grad_enabled() else []
        try:
            return self.encoder(**self._encoder_kwargs(input_ids, attention_mask, token_type_ids))[0]
        finally:
            for layer in stepped:
                layer.step_mask = None

    def routing_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The task router's view: the shared weights with no mask (supsup: exactly the pretrained encoder; exssnet:
        plus the few values tasks own and trained), mean-pooled and unit length. Measured far better than one task's
        masked view (benchmarks/results/task_inference_*.json)."""
        self._activate(SHARED_VIEW)
        hidden = self.encoder(**self._encoder_kwargs(input_ids, attention_mask, token_type_ids))[0]
        return F.normalize(pool(hidden, attention_mask, "mean").float(), dim=-1)

    def _set_step_masks(self) -> list[SupermaskLinear]:
        """In the mask phase, select every layer's top-k for this step in one batched call per layer shape.

        Per-layer selection is ~13 small kernel launches per layer; on a GPU the launches, not the math,
        bound the step (measured on an H100: mask step 1.86x dense per layer, 1.21x batched).
        """
        training = [layer for layer in self._layer_list()  # cached: no module walk per training step
                    if isinstance(layer, SupermaskLinear) and layer.phase == MASK_PHASE and layer.active_task == layer.learning_task
                    and layer.scores is not None and layer.scores.requires_grad]
        groups: dict[tuple, list[SupermaskLinear]] = {}
        for layer in training:
            groups.setdefault((tuple(layer.scores.shape), layer.k, layer.topk_method, layer.scores.device), []).append(layer)
        for (shape, k, method, _), members in groups.items():
            rows = torch.stack([layer.scores.detach().abs().flatten() for layer in members])
            for layer, mask in zip(members, topk_mask_rows(rows, k, method), strict=True):
                layer.step_mask = mask.view(shape)
        return training

    # --- export --------------------------------------------------------------------------------------
    def export_task(self, task: str, output_dir: str | None = None) -> PreTrainedModel:
        """A plain `...ForSequenceClassification` for one finished task: masked weights merged (W * mask)."""
        index = self.task_index(task)
        layers, norms = self.supermask_layers(), self.task_norm_layers()
        state = {}
        with torch.no_grad():
            for name, tensor in self.base_state().items():
                owner, _, leaf = name.rpartition(".")
                if owner in layers and leaf == "weight":
                    tensor = layers[owner].effective_weight(index)
                elif owner in norms:
                    tensor = norms[owner].task_affine(index)[0 if leaf == "weight" else 1]
                state[name] = tensor
        return export_sequence_classifier(self, task, state, output_dir)

    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        # The shared encoder and every head; per-phase tensors (scores, trainable values) are not extra weights.
        total = sum(t.numel() for t in self.base_state().values())
        total += sum(t.numel() for t in self.heads.state_dict().values())
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}")
