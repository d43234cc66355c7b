"""`LoraMethodConfig`: the LoRA adapter every task gets (rank, scaling, dropout, where) and its learning rate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...targets import normalise_target_modules, resolve_target_modules
from ..config import MethodConfig, check_values_dtype

DEFAULT_LORA_TARGETS = "attention"


def positive_number(owner: str, name: str, value: Any, what: str) -> float:
    """`value` as a finite float > 0, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}.{name}={value!r} must be a positive number ({what}).")
    return float(value)


@dataclass
class LoraMethodConfig(MethodConfig):
    """Configuration of `lora`: one PEFT LoRA adapter (and one head) per task on the frozen shared encoder."""

    predating: ClassVar[dict[str, Any]] = {"values_dtype": None}  # before it, adapters were kept exact

    r: int = field(default=8, metadata={
        "help": "Rank of each task's LoRA update (LoRA's r): every targeted layer gets r * (in + out) adapter weights per task."})
    lora_alpha: float = field(default=16, metadata={
        "help": "LoRA scaling numerator: a task's update is (lora_alpha / r) * B @ A."})
    lora_dropout: float = field(default=0.1, metadata={
        "help": "Dropout on the input of each LoRA update while training, in [0, 1)."})
    target_modules: list[str] | str | None = field(default=DEFAULT_LORA_TARGETS, metadata={
        "help": "nn.Linear layers that get a LoRA adapter: a preset (all | attention | ffn, resolved per model_type), a list of "
                "name suffixes, or one regex over full module names. Default: attention (query, key, value and the attention "
                "output projection of every layer)."})
    adapter_learning_rate: float = field(default=5e-4, metadata={
        "help": "LR of a task's adapter (and, unless head_learning_rate is set, its head): LoRA wants ~10x a full "
                "fine-tuning LR (5e-4 for BERT-base)."})
    values_dtype: str | None = field(default="float16", metadata={
        "help": "Dtype a task's trained adapter weights are kept and stored in: float16 | bfloat16 | null (the encoder's, "
                "exact), as exssnet keeps its trained values. They are rounded when the task finishes, before it is "
                "evaluated, so what is measured is what is served; float16 halves the adapters' bytes (benchmarks/README.md "
                "measures the accuracy it costs)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"{owner}.r={self.r!r} must be a positive int (the LoRA rank, e.g. 8).")
        self.lora_alpha = positive_number(owner, "lora_alpha", self.lora_alpha, "the LoRA scaling numerator, e.g. 16")
        dropout = self.lora_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner}.lora_dropout={self.lora_dropout!r} must be a number in [0, 1).")
        self.lora_dropout = float(dropout)
        self.adapter_learning_rate = positive_number(owner, "adapter_learning_rate", self.adapter_learning_rate,
                                                     "a learning rate, e.g. 5e-4")
        check_values_dtype(owner, self.values_dtype)
        targets = normalise_target_modules(owner, self.target_modules)
        self.target_modules = DEFAULT_LORA_TARGETS if targets is None else targets

    def resolved_target_modules(self, model_type: str) -> list[str] | str:
        return resolve_target_modules(self.target_modules, model_type)
