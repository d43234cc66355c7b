"""`ExSSNetConfig`: what the supermask methods mask, how densely, and how a task's mask starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...targets import TARGET_MODULES_HELP, normalise_target_modules, resolve_target_modules
from ..config import MethodConfig, check_choice, check_values_dtype

METHODS = ("exssnet", "ssnet", "supsup")
SCORE_INITS = ("kaiming_uniform", "magnitude", "uniform")
WEIGHT_INITS = ("pretrained", "signed_constant")
TOPK_METHODS = ("auto", "topk", "kthvalue", "sort")


@dataclass
class ExSSNetConfig(MethodConfig):
    """Configuration of the supermask methods (`exssnet`, `ssnet`, `supsup`; `wsn` extends it). Through the registry
    (trainer, CLI, checkpoints) `ssnet` uses `SSNetConfig`, the same fields with density 0.1 by default.

    Every field's help text is its documentation; `exssnet-nlp train --method exssnet --help` prints them.
    """

    allowed_methods: ClassVar[tuple[str, ...]] = METHODS  # the `method` values this config accepts; a subclass sets its own
    predating: ClassVar[dict[str, Any]] = {"values_dtype": None}  # before it, values were kept exact

    density: float = field(default=0.5, metadata={
        "help": "Fraction of each targeted layer's weights that a task's mask keeps (0 < density <= 1); a mask holds "
                "exactly round(density * numel) weights. Default 0.5: the most accurate of the grid's 0.05 to 0.5 (three "
                "seeds) for exssnet and supsup; 0.1 stores fewer bytes per task (README, 'Each default')."})
    method: str = field(default="exssnet", metadata={
        "help": "exssnet (mask, then train the weights no earlier task uses: zero forgetting) | ssnet (mask, then train "
                "every weight in the mask: forgets) | supsup (masks only)."})
    target_modules: list[str] | str | None = field(default="ffn", metadata={
        "help": TARGET_MODULES_HELP + " Default: ffn (all cost exssnet@0.1 5.73 points on the CPU grid, three seeds: "
                "README, 'Hyper-parameters that matter')."})
    score_init: str = field(default="magnitude", metadata={
        "help": "How a task's scores start: kaiming_uniform (SupSup) | magnitude (|pretrained weight| + 1% jitter: the "
                "first mask keeps the largest weights) | uniform."})
    reuse_score_scale: float = field(default=1.0, metadata={
        "help": "Factor in [0, 1] on the initial scores of weights earlier tasks' masks hold (1: off); below 1 a new "
                "task starts on more free weights, which exssnet may train. Off by default: 0.8 cost exssnet@0.1 3.40 "
                "points on the CPU grid (three seeds), its later masks starting on weaker weights (README, 'Each default')."})
    task_norms: bool = field(default=False, metadata={
        "help": "Give every task its own copy of each LayerNorm affine, trained with its mask (MiniLM: 39,936 bytes per task)."})
    weight_init: str = field(default="pretrained", metadata={
        "help": "pretrained (keep the encoder's weights) | signed_constant (sign(w) * std(w) per masked layer, as SupSup)."})
    values_dtype: str | None = field(default="float16", metadata={
        "help": "Dtype a task's trained weight values are kept and stored in: float16 | bfloat16 | null (the encoder's, "
                "exact). They are rounded when the task finishes, before it is evaluated, so what is measured is what is "
                "served. float16 halves the values' bytes and left the CPU grid's exssnet test accuracy unchanged (one "
                "example of 3,800 moved, in one of six checkpoints; benchmarks/README.md); supsup trains no weights, so "
                "it has no effect there."})
    topk_method: str = field(default="auto", metadata={
        "help": "Top-k selection every mask-phase step: auto (time each exact method once per shape and device) | "
                "topk | kthvalue | sort."})

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            density = float(self.density)
        except (TypeError, ValueError):
            raise ValueError(f"ExSSNetConfig.density={self.density!r} must be a number with 0 < density <= 1.") from None
        if not 0.0 < density <= 1.0:
            raise ValueError(f"ExSSNetConfig.density={self.density!r} is out of range; use a value with 0 < density <= 1 (e.g. 0.1).")
        self.density = density
        check_choice(type(self).__name__, "method", self.method, self.allowed_methods)
        check_choice(type(self).__name__, "score_init", self.score_init, SCORE_INITS)
        check_choice(type(self).__name__, "weight_init", self.weight_init, WEIGHT_INITS)
        check_choice(type(self).__name__, "topk_method", self.topk_method, TOPK_METHODS)
        check_values_dtype(type(self).__name__, self.values_dtype)
        try:
            scale = float(self.reuse_score_scale)
        except (TypeError, ValueError):
            scale = float("nan")
        if not 0.0 <= scale <= 1.0:
            raise ValueError(f"ExSSNetConfig.reuse_score_scale={self.reuse_score_scale!r} must be a number in [0, 1] (1: off).")
        self.reuse_score_scale = scale
        if not isinstance(self.task_norms, bool):
            raise ValueError(f"ExSSNetConfig.task_norms={self.task_norms!r} must be true or false.")
        self.target_modules = normalise_target_modules("ExSSNetConfig", self.target_modules)

    # --- resolution against an encoder -------------------------------------------------
    def resolved_target_modules(self, model_type: str) -> list[str] | str:
        """Suffix list or regex for this encoder: presets become the `model_type`'s regex."""
        return resolve_target_modules(self.target_modules, model_type)


@dataclass
class SSNetConfig(ExSSNetConfig):
    """Configuration of `ssnet` (exssnet's ablation: its weight phase trains every weight in the mask, so it forgets):
    every `ExSSNetConfig` field means the same; only the density default differs."""

    allowed_methods: ClassVar[tuple[str, ...]] = ("ssnet",)

    density: float = field(default=0.1, metadata={
        "help": "Fraction of each targeted layer's weights that a task's mask keeps (0 < density <= 1). Default 0.1: on "
                "the evidence grid ssnet@0.5 was 1.84 points below ssnet@0.1 (three seeds) and forgot more (BWT -1.66 "
                "against -0.41): denser masks share more weights, which ssnet overwrites."})
    method: str = field(default="ssnet", metadata={
        "help": "ssnet (mask, then train every weight in the mask: forgets)."})
