"""`ExSSNetConfig`: what gets masked, how densely, and how tasks are learned."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

METHODS = ("exssnet", "ssnet", "supsup")
SCORE_INITS = ("kaiming_uniform", "magnitude", "uniform")
WEIGHT_INITS = ("pretrained", "signed_constant")
POOLINGS = ("cls", "mean")
TOPK_METHODS = ("auto", "topk", "kthvalue", "sort")
HEAD_ACTIVATIONS = ("tanh", "gelu", "relu")

# The encoder's linear layers by part, per `model_type`, as regexes over full module names. `ffn` must not
# match the attention output projection, which BERT also names `...output.dense`.
_BERT_PARTS = {"attention": r".*\.attention\.(self\.(query|key|value)|output\.dense)",
               "ffn": r".*\.layer\.\d+\.(intermediate\.dense|output\.dense)"}
TARGET_MODULE_PRESETS: dict[str, dict[str, str]] = {
    **{t: _BERT_PARTS for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert")},
    "distilbert": {"attention": r".*\.attention\.(q_lin|k_lin|v_lin|out_lin)", "ffn": r".*\.ffn\.(lin1|lin2)"},
}
PRESET_NAMES = ("all", "attention", "ffn")
# `None` masks every attention projection and feed-forward layer (`all`), as the paper does.
DEFAULT_TARGET_MODULES = "all"

# The activation of each architecture's own sequence-classification head, so that a
# CLS-pooled task exports to the encoder's `...ForSequenceClassification` exactly.
DEFAULT_HEAD_ACTIVATION: dict[str, str] = {
    "bert": "tanh",
    "roberta": "tanh",
    "xlm-roberta": "tanh",
    "camembert": "tanh",
    "electra": "gelu",
    "distilbert": "relu",
}


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"ExSSNetConfig.{name}={value!r} is not valid; allowed values: {', '.join(allowed)}.")


@dataclass
class ExSSNetConfig:
    """Configuration of an `ExSSNetModel`.

    Args:
        density: Fraction of each targeted layer's weights that a task's mask keeps
            (0 < density <= 1). A task's mask holds exactly `round(density * numel)` weights.
        method: `exssnet` (masks, then training of the weights that no earlier task uses:
            zero forgetting), `ssnet` (masks, then training of every weight in the mask:
            forgets, a baseline) or `supsup` (masks only, weights fixed).
        target_modules: Which `nn.Linear` modules to mask: a preset (`all`: attention projections and
            feed-forward layers; `attention`; `ffn`: feed-forward layers only, resolved per
            `model_type`), a list of name suffixes, or one string used as a regular expression that
            must match the full module name. `None` means `all`. Layers left out stay frozen at their
            pretrained values and are shared by every task.
        score_init: How a new task's scores start: `kaiming_uniform` (SupSup), `magnitude`
            (|pretrained weight| plus a small random jitter: the first mask keeps the largest
            weights) or `uniform` (U(0, 1)).
        reuse_score_scale: Factor on the initial scores of the weights that earlier tasks' masks already
            hold (1: no change). Below 1, a new task starts from more weights no earlier task uses, which
            `exssnet` may train (with `magnitude` init and 1, later tasks start inside task 0's mask).
        task_norms: Give every task its own copy of each `nn.LayerNorm` affine (weight and bias) of the
            encoder, trained with the task's scores and weights; the pretrained norms stay shared and frozen.
            Costs 2 x hidden floats per norm per task (MiniLM: 13 norms, 39,936 bytes).
        weight_init: `pretrained` keeps the encoder's weights (default); `signed_constant`
            replaces each masked layer's weights by sign(w) * std(w), as in SupSup.
        pooling: How the heads pool the last hidden state: `cls` (first token) or `mean`
            (over non-padding tokens).
        head_activation: Activation between the head's dense layer and its output layer;
            `None` takes the one of the encoder's own classification head.
        head_dropout: Dropout before each dense layer of the head.
        topk_method: How the top-k is selected every mask-phase step: `auto` times each exact
            method once per (shape, device) and keeps the fastest; or `topk`, `kthvalue`, `sort`.
        seed: Seed for score initialisation (each task draws from `seed + task index`).
    """

    density: float = 0.1
    method: str = "exssnet"
    target_modules: list[str] | str | None = None
    score_init: str = "magnitude"
    reuse_score_scale: float = 1.0
    task_norms: bool = False
    weight_init: str = "pretrained"
    pooling: str = "cls"
    head_activation: str | None = None
    head_dropout: float = 0.1
    topk_method: str = "auto"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            density = float(self.density)
        except (TypeError, ValueError):
            raise ValueError(f"ExSSNetConfig.density={self.density!r} must be a number with 0 < density <= 1.") from None
        if not 0.0 < density <= 1.0:
            raise ValueError(f"ExSSNetConfig.density={self.density!r} is out of range; use a value with 0 < density <= 1 (e.g. 0.1).")
        self.density = density
        _check_choice("method", self.method, METHODS)
        _check_choice("score_init", self.score_init, SCORE_INITS)
        _check_choice("weight_init", self.weight_init, WEIGHT_INITS)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("topk_method", self.topk_method, TOPK_METHODS)
        if self.head_activation is not None:
            _check_choice("head_activation", self.head_activation, HEAD_ACTIVATIONS)
        try:
            scale = float(self.reuse_score_scale)
        except (TypeError, ValueError):
            scale = float("nan")
        if not 0.0 <= scale <= 1.0:
            raise ValueError(f"ExSSNetConfig.reuse_score_scale={self.reuse_score_scale!r} must be a number in [0, 1] (1: off).")
        self.reuse_score_scale = scale
        if not isinstance(self.task_norms, bool):
            raise ValueError(f"ExSSNetConfig.task_norms={self.task_norms!r} must be true or false.")
        if not 0.0 <= float(self.head_dropout) < 1.0:
            raise ValueError(f"ExSSNetConfig.head_dropout={self.head_dropout!r} must be in [0, 1).")
        if isinstance(self.target_modules, (list, tuple)) and len(self.target_modules) == 1 \
                and self.target_modules[0] in PRESET_NAMES:
            self.target_modules = self.target_modules[0]  # `--target_modules ffn` on a command line
        if self.target_modules is not None and self.target_modules not in PRESET_NAMES:
            if isinstance(self.target_modules, str):
                try:
                    re.compile(self.target_modules)
                except re.error as err:
                    raise ValueError(f"ExSSNetConfig.target_modules={self.target_modules!r} is not a valid regex: {err}.") from None
            elif not (isinstance(self.target_modules, (list, tuple)) and self.target_modules
                      and all(isinstance(t, str) for t in self.target_modules)):
                raise ValueError("ExSSNetConfig.target_modules must be None, a regex string or a non-empty list of module-name suffixes.")
            else:
                self.target_modules = list(self.target_modules)

    # --- resolution against an encoder -------------------------------------------------
    def resolved_target_modules(self, model_type: str) -> list[str] | str:
        """Suffix list or regex for this encoder: presets become the `model_type`'s regex."""
        targets = self.target_modules if self.target_modules is not None else DEFAULT_TARGET_MODULES
        if targets not in PRESET_NAMES:
            return targets
        if model_type not in TARGET_MODULE_PRESETS:
            raise ValueError(
                f"target_modules={targets!r} is a preset, and presets are known only for model_type "
                f"{', '.join(sorted(TARGET_MODULE_PRESETS))}, not {model_type!r}. Pass ExSSNetConfig(target_modules=[...]) "
                "with the names of the nn.Linear layers to mask."
            )
        parts = TARGET_MODULE_PRESETS[model_type]
        if targets == "all":
            return "|".join(f"(?:{regex})" for regex in parts.values())
        return parts[targets]

    def resolved_head_activation(self, model_type: str) -> str:
        return self.head_activation or DEFAULT_HEAD_ACTIVATION.get(model_type, "tanh")

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExSSNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown ExSSNetConfig field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json_string() + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> ExSSNetConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
