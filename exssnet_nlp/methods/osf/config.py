"""`OSFMethodConfig`: which layers PEFT's OSF adapts, how much of each layer's spectrum it freezes per task, the LR."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...targets import TARGET_MODULES_HELP, normalise_target_modules, resolve_target_modules
from ..config import MethodConfig


def _rank_setting(owner: str, name: str, value: Any, allow_zero: bool) -> float | int:
    """A fraction in (0, 1) (or [0, 1)) of a matrix's smaller dimension, or a whole number >= 1 (an absolute rank)."""
    low = "[0, 1)" if allow_zero else "(0, 1)"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or (value == 0 and not allow_zero) or (value >= 1 and value != int(value)):
        raise ValueError(f"{owner}.{name}={value!r} must be a fraction in {low} of each targeted matrix's smaller dimension, "
                         "or a whole number >= 1 (an absolute rank).")
    return int(value) if value >= 1 else float(value)


def resolve_rank(value: float | int, min_dim: int) -> int:
    """A rank setting for a matrix whose smaller dimension is `min_dim`."""
    return int(value) if value >= 1 else int(min_dim * value)


@dataclass
class OSFMethodConfig(MethodConfig):
    """Configuration of `osf`: PEFT's Orthogonal Subspace Fine-tuning of one shared encoder, task after task.

    Task i (0-based) freezes the top `effective_rank + i * rank_increment` singular directions of each targeted
    weight (as it is after the earlier tasks) and trains the rest, its gradients projected off the frozen ones;
    at most min_dim - 1 directions are frozen, so every task trains at least one.
    """

    effective_rank: float = field(default=0.5, metadata={
        "help": "Singular directions of each targeted weight that the first task keeps frozen (OSF's effective_rank): a "
                "fraction in (0, 1) of the matrix's smaller dimension, or a whole number >= 1. The rest is trained."})
    rank_increment: float = field(default=0.1, metadata={
        "help": "How many more directions each later task freezes (the SVD is recomputed on the weights the earlier tasks "
                "left): a fraction in [0, 1) of the smaller dimension, or a whole number >= 1."})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": TARGET_MODULES_HELP})
    osf_learning_rate: float | None = field(default=None, metadata={
        "help": "LR of the trained singular factors (U_low, S_low, V_low); default: weight_learning_rate (a full "
                "fine-tuning LR: OSF trains full-rank pieces of the weights)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        self.effective_rank = _rank_setting(owner, "effective_rank", self.effective_rank, allow_zero=False)
        self.rank_increment = _rank_setting(owner, "rank_increment", self.rank_increment, allow_zero=True)
        if self.osf_learning_rate is not None:
            lr = self.osf_learning_rate
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
                raise ValueError(f"{owner}.osf_learning_rate={lr!r} must be a positive number (or None: weight_learning_rate).")
            self.osf_learning_rate = float(lr)
        self.target_modules = normalise_target_modules(owner, self.target_modules)

    def resolved_target_modules(self, model_type: str) -> list[str] | str:
        return resolve_target_modules(self.target_modules, model_type)

    def preserved_rank(self, task_index: int, min_dim: int) -> int:
        """Frozen directions of a matrix with smaller dimension `min_dim` while task `task_index` (0-based) learns."""
        rank = resolve_rank(self.effective_rank, min_dim) + task_index * resolve_rank(self.rank_increment, min_dim)
        return max(1, min(rank, min_dim - 1))
