"""`WSNLinear`: a `SupermaskLinear` whose one training phase learns the mask and the free weights together.

State per layer during the joint phase (besides `SupermaskLinear`'s):
- `scores`: the task's real-valued scores; its mask is their top-k, exactly as in the mask phase.
- `free_mask` (bool, the weight's shape): the positions no earlier task's mask holds.
- `exclusive_values`: the weight values at `free_mask` (row-major order), trainable: the only weight
  values any optimizer can reach. One value per free position: a copy of the whole layer for the
  first task, less for every later one.

The forward uses `W' * mask`, with `W'` the weight with `exclusive_values` put in at the free positions;
the scores get the straight-through gradient `grad * W'`, the free values `grad * mask`. `finish_task`
writes back only the values at the positions the task owns (its final mask & `free_mask`): updates to free
positions outside the final mask (momentum, weight decay, positions that left the mask) are dropped, so
every weight outside the union of finished masks keeps its pretrained value.
"""

from __future__ import annotations

import torch

from ...masks import pack_bits, topk_mask
from ..supermask.layer import MASK_PHASE, SupermaskLinear

JOINT_PHASE = "train"  # the model's one phase of a `wsn` task; its layers run their mask phase with free values trainable


class JointMaskedWeight(torch.autograd.Function):
    """`weight * mask` whose gradient reaches both the scores and the weight.

    d loss / d scores = d loss / d (weight * mask) * weight (straight through, as `MaskedWeight`);
    d loss / d weight = d loss / d (weight * mask) * mask (the ordinary product rule).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight, mask)
        ctx.scores_dtype = scores.dtype
        return weight * mask

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        weight, mask = ctx.saved_tensors
        grad_weight = grad_output * mask if ctx.needs_input_grad[0] else None
        grad_scores = (grad_output * weight).to(ctx.scores_dtype) if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


class WSNLinear(SupermaskLinear):
    """A `SupermaskLinear` with a joint phase (`begin_joint_phase`): scores and free weight values train together."""

    def __init__(self, base: torch.nn.Linear, density: float, topk_method: str = "auto", values_dtype: torch.dtype | None = None) -> None:
        super().__init__(base, density, topk_method, values_dtype)
        self.register_buffer("free_mask", None)

    def joint(self) -> bool:
        """Whether the task being learned is in its joint phase."""
        return self.phase == MASK_PHASE and self.exclusive_values is not None

    def begin_joint_phase(self) -> None:
        """Train the scores (as in the mask phase) and the values at every position no earlier task's mask holds."""
        self.begin_mask_phase()
        free = ~self.union_mask(self.learning_task)
        self.free_mask = free
        self.exclusive_values = torch.nn.Parameter(self.weight.detach()[free].clone(), requires_grad=True)
        self._invalidate()

    def joint_weight(self) -> torch.Tensor:
        """The weight with the trainable free values in place (differentiable in them)."""
        return self.weight.masked_scatter(self.free_mask, self.exclusive_values)

    def finish_task(self) -> None:
        """Freeze the task: the values at the positions it owns into `weight`, its mask into packed bits."""
        if not self.joint():
            super().finish_task()
            return
        mask = self.current_mask()
        with torch.no_grad():
            owned = mask & self.free_mask
            kept = mask[self.free_mask]  # which free values the final mask holds, in the same row-major order
            self.weight[owned] = self.frozen_values(self.exclusive_values[kept])
        self.discard_task()
        self.add_finished_mask(pack_bits(mask))

    def discard_task(self) -> None:
        super().discard_task()
        self.free_mask = None

    def effective_weight(self, task: int | None = None) -> torch.Tensor:
        task = self.active_task if task is None else task
        if task is None or task != self.learning_task or not self.joint():
            return super().effective_weight(task)
        weight = self.joint_weight()
        if self.scores.requires_grad:
            # The model sets `step_mask` for all layers at once per forward; alone, the layer selects its own.
            mask = self.step_mask if self.step_mask is not None else topk_mask(self.scores, self.k, self.topk_method)
            return JointMaskedWeight.apply(weight, self.scores, mask)
        return weight * self.current_mask()
