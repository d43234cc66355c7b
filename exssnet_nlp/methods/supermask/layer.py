"""`SupermaskLinear`: one `nn.Linear` of the encoder with per-task supermasks.

State per layer:
- `weight`, `bias`: the shared tensors, never parameters the optimizer can see.
- `task_mask_{i}`: task i's finished mask as packed bits (registered buffer: survives `state_dict`).
- `scores`: real-valued scores of the task being learned (mask phase), then dropped.
- `exclusive_index`, `exclusive_values`: during the weight phase, the flat positions the task may
  train and their values: the only weight values any optimizer can reach. `finish_task` writes them
  back into `weight`; no later task owns them, so they never change again.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...masks import MaskedWeight, num_kept, pack_bits, packed_size, topk_mask, unpack_bits

MASK_PHASE = "mask"
WEIGHT_PHASE = "weight"
SHARED_VIEW = -1  # `active_task` for the shared weights without any mask (the task router's view)


class SupermaskLinear(nn.Module):
    """A drop-in replacement for `nn.Linear` whose weight is `weight * mask_task`."""

    def __init__(self, base: nn.Linear, density: float, topk_method: str = "auto",
                 values_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features = base.in_features
        self.out_features = base.out_features
        # Buffers, not frozen parameters: no optimizer over model.parameters() can reach the shared weights.
        self.register_buffer("weight", base.weight.detach())
        self.register_buffer("bias", None if base.bias is None else base.bias.detach())
        self.density = density
        self.k = num_kept(self.weight.numel(), density)
        self.topk_method = topk_method
        self.values_dtype = values_dtype  # trained values are rounded to it when a task finishes (None: kept exact)
        self.num_finished = 0
        self.active_task: int | None = None
        self.learning_task: int | None = None
        self.phase: str | None = None
        self.register_parameter("scores", None)
        self.register_parameter("exclusive_values", None)
        self.register_buffer("exclusive_index", None)
        self._phase_mask: torch.Tensor | None = None
        self.step_mask: torch.Tensor | None = None  # this training step's mask, set by ExSSNetModel.encode
        self._cache_key: tuple | None = None
        self._cache_weight: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"density={self.density}, k={self.k}, finished_tasks={self.num_finished}")

    # --- masks of finished tasks -------------------------------------------------------------
    def packed_mask(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.num_finished:
            raise ValueError(f"task index {index} has no finished mask in this layer ({self.num_finished} finished).")
        return getattr(self, f"task_mask_{index}")

    def task_mask(self, index: int) -> torch.Tensor:
        """Bool mask of task `index` (finished, or the one being learned)."""
        if index == self.learning_task:
            return self.current_mask()
        return unpack_bits(self.packed_mask(index), self.weight.shape)

    def union_mask(self, upto: int) -> torch.Tensor:
        """Bool union of the masks of finished tasks 0..upto-1 (OR on packed bits: cheap)."""
        upto = min(upto, self.num_finished)
        if upto == 0:
            return torch.zeros_like(self.weight, dtype=torch.bool)
        packed = self.packed_mask(0).clone()
        for i in range(1, upto):
            packed |= self.packed_mask(i)
        return unpack_bits(packed, self.weight.shape)

    def owned_mask(self, index: int) -> torch.Tensor:
        """The weights task `index` owns: its mask minus the union of earlier tasks' masks (the one place this is computed)."""
        return self.task_mask(index) & ~self.union_mask(index)

    def add_finished_mask(self, packed: torch.Tensor) -> None:
        """Register a finished task's packed mask (used by `finish_task` and checkpoint loading)."""
        expected = packed_size(self.weight.numel())
        if packed.dtype != torch.uint8 or packed.numel() != expected:
            raise ValueError(f"packed mask must be {expected} uint8 bytes for weight {tuple(self.weight.shape)}, "
                             f"got {packed.numel()} {packed.dtype}.")
        self.register_buffer(f"task_mask_{self.num_finished}", packed.to(self.weight.device))
        self.num_finished += 1

    # --- the task being learned -------------------------------------------------------------
    def start_task(self, index: int, score_init: str, generator: torch.Generator, reuse_score_scale: float = 1.0) -> None:
        """New scores for task `index`; those of weights an earlier task's mask holds are scaled by `reuse_score_scale`."""
        if index != self.num_finished:
            raise ValueError(f"cannot start task {index}: this layer has {self.num_finished} finished tasks.")
        scores = torch.empty(self.weight.shape, dtype=torch.float32)
        if score_init == "kaiming_uniform":
            bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and SupSup
            scores.uniform_(-bound, bound, generator=generator)
        elif score_init == "magnitude":
            # Largest pretrained weights first; a 1% jitter breaks ties between equal magnitudes.
            jitter = torch.rand(self.weight.shape, generator=generator)
            scores = self.weight.detach().float().abs().cpu() * (1.0 + 0.01 * jitter)
        elif score_init == "uniform":
            scores.uniform_(0.0, 1.0, generator=generator)
        else:
            raise ValueError(f"unknown score_init {score_init!r}")
        scores = scores.to(self.weight.device)
        if reuse_score_scale != 1.0 and index > 0:
            scores = torch.where(self.union_mask(index), scores * reuse_score_scale, scores)
        self.scores = nn.Parameter(scores, requires_grad=False)
        self.learning_task = index
        self.phase = None
        self._invalidate()

    def set_scores_from_mask(self, mask: torch.Tensor) -> None:
        """Start the current scores so that their top-k is exactly `mask` (which must hold k weights).

        The fresh scores keep their scale and their order within each side: kept weights are lifted just
        above the fresh k-th largest |score|, the rest pushed just below it. Scores on another scale (e.g.
        [1, 2) against |w| ~ 0.05) would make the mask learning rate mean something else after a transfer.
        """
        if self.scores is None:
            raise ValueError("no task is being learned in this layer; call add_task first.")
        if int(mask.sum()) != self.k:
            raise ValueError(f"mask holds {int(mask.sum())} weights; this layer's masks hold exactly {self.k}.")
        with torch.no_grad():
            magnitude = self.scores.detach().abs()
            flat = magnitude.flatten()
            threshold = flat.kthvalue(flat.numel() - self.k + 1).values.clamp(min=1e-12)
            mask = mask.to(magnitude.device)
            lifted = torch.where(mask, magnitude.clamp(min=threshold * 1.001), magnitude.clamp(max=threshold * 0.999))
            sign = torch.where(self.scores >= 0, 1.0, -1.0).to(self.scores.dtype)
            self.scores.copy_(lifted * sign)
        self._invalidate()

    def current_mask(self) -> torch.Tensor:
        if self._phase_mask is not None:
            return self._phase_mask
        if self.scores is None:
            raise ValueError("no task is being learned in this layer.")
        return topk_mask(self.scores, self.k, self.topk_method)

    def begin_mask_phase(self) -> None:
        if self.scores is None:
            raise ValueError("no task is being learned in this layer; call add_task first.")
        self.phase = MASK_PHASE
        self.scores.requires_grad_(True)
        self._invalidate()

    def begin_weight_phase(self, exclusive: bool) -> None:
        """Fix the mask; make trainable the values at mask & ~(earlier masks) (`exclusive`) or at mask."""
        mask = self.current_mask()
        self.scores.requires_grad_(False)
        self._phase_mask = mask
        trainable = self.owned_mask(self.learning_task) if exclusive else mask
        index = trainable.flatten().nonzero().squeeze(1)
        self.exclusive_index = index
        self.exclusive_values = nn.Parameter(self.weight.detach().flatten()[index].clone(), requires_grad=True)
        self.phase = WEIGHT_PHASE
        self._invalidate()

    def frozen_values(self, values: torch.Tensor) -> torch.Tensor:
        """Trained values as a finished task keeps them: rounded through `values_dtype`, so that the live weights
        are exactly what a checkpoint stores in that dtype (a reloaded model serves the same logits)."""
        values = values.detach()
        if self.values_dtype is not None:
            values = values.to(self.values_dtype)
        return values.to(self.weight.dtype)

    def finish_task(self) -> None:
        """Freeze the task: trained values into `weight`, its mask into packed bits."""
        mask = self.current_mask()
        with torch.no_grad():
            if self.exclusive_values is not None:
                self.weight.view(-1)[self.exclusive_index] = self.frozen_values(self.exclusive_values)
        self.discard_task()
        self.add_finished_mask(pack_bits(mask))

    def discard_task(self) -> None:
        """Drop the task being learned without keeping anything of it."""
        self.scores = None
        self.exclusive_values = None
        self.exclusive_index = None
        self._phase_mask = None
        self.learning_task = None
        self.phase = None
        self._invalidate()

    # --- forward ---------------------------------------------------------------------------
    def _invalidate(self) -> None:
        self._cache_key = None
        self._cache_weight = None

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202  (nn.Module's signature)
        # .half(), .to(device): the tensors are replaced, and the cached masked weight must go with them.
        self._invalidate()
        return super()._apply(fn, *args, **kwargs)

    def _versions(self) -> tuple:
        # In-place updates (optimizer steps, finish_task) bump `_version`: a stale cache can't be hit.
        return tuple(getattr(t, "_version", None) for t in (self.weight, self.scores, self.exclusive_values))

    def effective_weight(self, task: int | None = None) -> torch.Tensor:
        """`weight * mask_task` for `task` (default: the active task), with trained values in place."""
        task = self.active_task if task is None else task
        if task is None:
            raise ValueError("no active task: call model.set_task(name) or pass task=... to forward.")
        if task == self.learning_task:
            if self.phase == WEIGHT_PHASE:
                weight = self.weight
                if self.exclusive_values is not None:
                    weight = weight.flatten().scatter(0, self.exclusive_index, self.exclusive_values).view_as(weight)
                return weight * self._phase_mask
            if self.phase == MASK_PHASE and self.scores.requires_grad:
                # The model sets `step_mask` for all layers at once per forward; alone, the layer selects its own.
                mask = self.step_mask if self.step_mask is not None else topk_mask(self.scores, self.k, self.topk_method)
                return MaskedWeight.apply(self.weight, self.scores, mask)
            return self.weight * self.current_mask()
        return self.weight * self.task_mask(task)

    def _trains_active_task(self) -> bool:
        if self.active_task is None or self.active_task != self.learning_task:
            return False
        return any(t is not None and t.requires_grad for t in (self.scores, self.exclusive_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_task == SHARED_VIEW:
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() and self._trains_active_task():
            return F.linear(x, self.effective_weight(), self.bias)
        # Nothing to differentiate: the masked weight is cached per (task, phase, tensor versions),
        # so eval and inference run no top-k and no unpacking per call.
        key = (self.active_task, self.phase if self.active_task == self.learning_task else None, self._versions())
        if key != self._cache_key:
            with torch.no_grad():
                self._cache_weight = self.effective_weight()
            self._cache_key = key
        return F.linear(x, self._cache_weight, self.bias)


class TaskLayerNorm(nn.Module):
    """A drop-in replacement for `nn.LayerNorm` with one affine (weight, bias) per task.

    The shared `weight`/`bias` keep the pretrained values and never change. The task being learned trains
    its own copy (`learning_weight`/`learning_bias`, started from the shared values); `finish_task` turns it
    into the buffers `task_weight_{i}`/`task_bias_{i}`, which no optimizer can reach.
    """

    def __init__(self, base: nn.LayerNorm) -> None:
        super().__init__()
        if not base.elementwise_affine or base.weight is None or base.bias is None:
            raise ValueError("TaskLayerNorm needs a LayerNorm with elementwise_affine=True and a bias.")
        self.normalized_shape = tuple(base.normalized_shape)
        self.eps = base.eps
        self.register_buffer("weight", base.weight.detach())  # shared, never trained: out of every optimizer's reach
        self.register_buffer("bias", base.bias.detach())
        self.register_parameter("learning_weight", None)
        self.register_parameter("learning_bias", None)
        self.num_finished = 0
        self.active_task: int | None = None
        self.learning_task: int | None = None

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, finished_tasks={self.num_finished}"

    def task_affine(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of task `index` (finished, or the one being learned)."""
        if index == self.learning_task:
            return self.learning_weight, self.learning_bias
        if not 0 <= index < self.num_finished:
            raise ValueError(f"task index {index} has no norm in this layer ({self.num_finished} finished).")
        return getattr(self, f"task_weight_{index}"), getattr(self, f"task_bias_{index}")

    def add_finished_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Register a finished task's affine (used by `finish_task` and checkpoint loading)."""
        for label, tensor in (("weight", weight), ("bias", bias)):
            if tuple(tensor.shape) != tuple(self.weight.shape):
                raise ValueError(f"norm {label} must have shape {tuple(self.weight.shape)}, got {tuple(tensor.shape)}.")
        index = self.num_finished
        self.register_buffer(f"task_weight_{index}", weight.detach().to(self.weight).clone())
        self.register_buffer(f"task_bias_{index}", bias.detach().to(self.bias).clone())
        self.num_finished += 1

    def start_task(self, index: int) -> None:
        if index != self.num_finished:
            raise ValueError(f"cannot start task {index}: this norm has {self.num_finished} finished tasks.")
        self.learning_weight = nn.Parameter(self.weight.detach().clone(), requires_grad=False)
        self.learning_bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        self.learning_task = index

    def finish_task(self) -> None:
        weight, bias = self.learning_weight, self.learning_bias
        self.discard_task()
        self.add_finished_affine(weight, bias)

    def discard_task(self) -> None:
        self.learning_weight = None
        self.learning_bias = None
        self.learning_task = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_task is None:
            raise ValueError("no active task: call model.set_task(name) or pass task=... to forward.")
        shared = self.active_task == SHARED_VIEW
        weight, bias = (self.weight, self.bias) if shared else self.task_affine(self.active_task)
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
