"""What every method's settings share (`MethodConfig`), and how a method names its training phases (`Phase`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

POOLINGS = ("cls", "mean")
HEAD_ACTIVATIONS = ("tanh", "gelu", "relu")


def check_choice(owner: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Refuse a setting outside its choices, naming them."""
    if value not in allowed:
        raise ValueError(f"{owner}.{name}={value!r} is not valid; allowed values: {', '.join(allowed)}.")


VALUES_DTYPES = ("float16", "bfloat16")  # what a method may keep a task's trained values in (`values_dtype`)


def check_values_dtype(owner: str, value: str | None) -> None:
    """Refuse a `values_dtype` that is neither one of VALUES_DTYPES nor None (exact)."""
    if value is not None and value not in VALUES_DTYPES:
        raise ValueError(f"{owner}.values_dtype={value!r} is not valid; allowed values: {', '.join(VALUES_DTYPES)}, "
                         "or null (none) to keep values exact in the encoder's dtype.")


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


@dataclass
class MethodConfig:
    """Settings every method has: how its per-task heads read the encoder."""

    # Fields added after checkpoints were first written, with what a saved config that lacks them meant; a
    # changed default must not change a saved model or a resumed run (the loader fills these in first).
    predating: ClassVar[dict[str, Any]] = {}

    pooling: str = field(default="cls", metadata={"help": "How heads pool the last hidden state: cls (first token) | mean."})
    head_activation: str | None = field(default=None, metadata={
        "help": "Activation inside each task head: tanh | gelu | relu; default: that of the encoder's own classification head."})
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout before each dense layer of a task head, in [0, 1)."})
    seed: int = field(default=0, metadata={"help": "Seeds heads and per-task initialisation (a task draws from seed and its name)."})

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "pooling", self.pooling, POOLINGS)
        if self.head_activation is not None:
            check_choice(owner, "head_activation", self.head_activation, HEAD_ACTIVATIONS)
        try:
            dropout = float(self.head_dropout)
        except (TypeError, ValueError):
            dropout = float("nan")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner}.head_dropout={self.head_dropout!r} must be a number in [0, 1).")
        self.head_dropout = dropout
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"{owner}.seed={self.seed!r} must be an int.")

    def resolved_head_activation(self, model_type: str) -> str:
        return self.head_activation or DEFAULT_HEAD_ACTIVATION.get(model_type, "tanh")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def given(self) -> set[str]:
        """The fields set away from this class's defaults: what a config instance says its caller chose (a resumed
        run keeps the saved value of the others)."""
        default = type(self)().to_dict()
        return {k for k, v in self.to_dict().items() if default.get(k) != v}

    @classmethod
    def saved(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A config dict as saved by any version: the fields it predates take the value they had then."""
        return {**cls.predating, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**data)


@dataclass(frozen=True)
class Phase:
    """One training phase of a task.

    `learning_rate` and `epochs` name argument fields (of the method's config first, then of
    `ContinualTrainingArguments`); for `learning_rate` the first one that is set wins. `optimizer` and
    `lr_scheduler`, when given, name the fields that choose them (default: AdamW, linear decay).
    """

    name: str
    learning_rate: tuple[str, ...]
    epochs: str
    trains: str
    optimizer: str | None = None
    lr_scheduler: str | None = None
