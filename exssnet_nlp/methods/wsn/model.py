"""`WSNModel`: Winning SubNetworks (Kang et al., ICML 2022) on a BERT-family encoder.

Learn a task with `add_task` -> `begin_phase("train")` -> `finish_task`. The one phase learns the task's
top-k mask (scores, straight-through, as `exssnet`'s mask phase) and, together with it, the weights no
earlier task's mask holds; weights earlier tasks use get no update (zero forgetting). `finish_task` keeps
the mask (packed bits) and the trained values at the positions the task owns (its mask minus the union of
earlier masks); everything else returns to its pretrained value. Checkpoints (`mask.*` or `maskxor.*`,
`values.*` in `values_dtype`, `head.*`), KKT (between `add_task` and the phase), capacity and export are `exssnet`'s.
"""

from __future__ import annotations

from torch import nn

from ...targets import replace_submodule
from ..base import Phase
from ..supermask.model import ExSSNetModel
from .config import WSNConfig
from .layer import JOINT_PHASE, WSNLinear

TRAIN = Phase(JOINT_PHASE, ("mask_learning_rate",), "mask_epochs",
              "the task's scores (its mask) at the mask LR, the weights no earlier task holds and the task's norms at "
              "weight_learning_rate, and its head",
              optimizer="mask_optimizer", lr_scheduler="mask_lr_scheduler")
MASK_LR, WEIGHT_LR = ("mask_learning_rate",), ("weight_learning_rate",)


class WSNModel(ExSSNetModel):
    """A shared encoder whose targeted linears hold one supermask per task, each learned jointly with its free weights."""

    config_class = WSNConfig

    @property
    def isolates_tasks(self) -> bool:  # type: ignore[override]
        return True

    def _inject(self) -> None:
        super()._inject()
        for name, layer in self.supermask_layers().items():
            # WSNLinear takes the SupermaskLinear's tensors as they are (shared storage, signed_constant applied).
            replace_submodule(self.encoder, name, WSNLinear(layer, layer.density, layer.topk_method, layer.values_dtype))

    def supermask_layers(self) -> dict[str, WSNLinear]:  # type: ignore[override]
        return super().supermask_layers()  # type: ignore[return-value]

    # --- the phase -----------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        return [TRAIN]

    def begin_train_phase(self) -> None:
        """Train the current task's scores, its free weight values, its norms and its head."""
        self.begin_phase(JOINT_PHASE)

    def _enter_phase(self, index: int, phase: str) -> None:
        for layer in self.supermask_layers().values():
            layer.begin_joint_phase()

    def _score_parameters(self) -> list[nn.Parameter]:
        return [layer.scores for layer in self.supermask_layers().values() if layer.scores is not None]

    def _weight_parameters(self) -> list[nn.Parameter]:
        params = [layer.exclusive_values for layer in self.supermask_layers().values() if layer.exclusive_values is not None]
        for norm in self.task_norm_layers().values():
            params += [norm.learning_weight, norm.learning_bias]
        return params

    def _phase_parameters(self, index: int, phase: str) -> list[nn.Parameter]:
        return self._score_parameters() + self._weight_parameters()

    def parameter_groups(self, phase: str) -> list[tuple[tuple[str, ...] | None, list[nn.Parameter]]]:
        """Scores at `mask_learning_rate`; the free weight values (and the task's norms) at `weight_learning_rate`."""
        if phase != JOINT_PHASE:
            raise ValueError(f"method 'wsn' has no phase {phase!r}; its phase: {JOINT_PHASE}.")
        self._learning_index("parameter_groups", (JOINT_PHASE,))
        return [(MASK_LR, self._score_parameters()), (WEIGHT_LR, self._weight_parameters())]
