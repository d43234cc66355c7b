"""`WSNConfig`: the supermask settings (`ExSSNetConfig`) for `wsn`; the method name and the density default (0.1) differ."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..supermask.config import ExSSNetConfig


@dataclass
class WSNConfig(ExSSNetConfig):
    """Configuration of `wsn` (Winning SubNetworks): every `ExSSNetConfig` field means the same here.

    `density` is the size of each task's mask; `score_init`, `reuse_score_scale`, `task_norms`, `weight_init`,
    `target_modules` and `topk_method` act as for `exssnet`. The phase's learning rates are the trainer's
    `mask_learning_rate` (scores, head) and `weight_learning_rate` (the free weight values, the task's norms).
    """

    allowed_methods: ClassVar[tuple[str, ...]] = ("wsn",)

    density: float = field(default=0.1, metadata={
        "help": "Fraction of each targeted layer's weights that a task's mask keeps (0 < density <= 1). Default 0.1: "
                "on the grid (three seeds) wsn@0.5 was no more accurate (65.20 against 65.28) at 2.3 times the bytes."})
    method: str = field(default="wsn", metadata={
        "help": "wsn (one phase: the mask and the weights no earlier task uses are learned together; zero forgetting)."})
