"""Which of an encoder's `nn.Linear` layers a method touches: presets per `model_type`, suffix lists, regexes."""

from __future__ import annotations

import re
from typing import Any

# The encoder's linear layers by part, per `model_type`, as regexes over full module names. `ffn` must not
# match the attention output projection, which BERT also names `...output.dense`.
_BERT_PARTS = {"attention": r".*\.attention\.(self\.(query|key|value)|output\.dense)",
               "ffn": r".*\.layer\.\d+\.(intermediate\.dense|output\.dense)"}
TARGET_MODULE_PRESETS: dict[str, dict[str, str]] = {
    **{t: _BERT_PARTS for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert")},
    "distilbert": {"attention": r".*\.attention\.(q_lin|k_lin|v_lin|out_lin)", "ffn": r".*\.ffn\.(lin1|lin2)"},
}
PRESET_NAMES = ("all", "attention", "ffn")
# `None` means every attention projection and feed-forward layer (`all`), as the paper masks; checkpoints that
# saved `None` keep meaning that. Configs say their own default (the masked methods' is `ffn`).
DEFAULT_TARGET_MODULES = "all"
TARGET_MODULES_HELP = ("nn.Linear layers to use: a preset (all | attention | ffn, resolved per model_type), a list of "
                       "name suffixes, or one regex over full module names; null: all.")


def normalise_target_modules(owner: str, value: list[str] | str | None) -> list[str] | str | None:
    """Validate a `target_modules` setting; a one-element list naming a preset becomes the preset."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and value[0] in PRESET_NAMES:
        return value[0]  # `--target_modules ffn` on a command line
    if value is None or value in PRESET_NAMES:
        return value
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"{owner}.target_modules={value!r} is not a valid regex: {err}.") from None
        return value
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(t, str) for t in value)):
        raise ValueError(f"{owner}.target_modules must be None, a preset (all, attention, ffn), a regex string or a "
                         "non-empty list of module-name suffixes.")
    return list(value)


def resolve_target_modules(targets: list[str] | str | None, model_type: str) -> list[str] | str:
    """Suffix list or regex for this encoder: presets become the `model_type`'s regex."""
    targets = targets if targets is not None else DEFAULT_TARGET_MODULES
    if targets not in PRESET_NAMES:
        return targets
    if model_type not in TARGET_MODULE_PRESETS:
        raise ValueError(
            f"target_modules={targets!r} is a preset, and presets are known only for model_type "
            f"{', '.join(sorted(TARGET_MODULE_PRESETS))}, not {model_type!r}. Pass target_modules=[...] "
            "with the names of the nn.Linear layers to use."
        )
    parts = TARGET_MODULE_PRESETS[model_type]
    if targets == "all":
        return "|".join(f"(?:{regex})" for regex in parts.values())
    return parts[targets]


def module_matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def target_linears(encoder: Any, targets: list[str] | str, model_type: str) -> list[str]:
    """Full names of the encoder's `nn.Linear` modules `targets` selects; refuses an empty selection."""
    from torch import nn  # here, not at import: configs (and `--help`) use this module without torch

    names = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear) and module_matches(n, targets)]
    if not names:
        linears = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)][:8]
        raise ValueError(f"target_modules={targets!r} matched no nn.Linear of this {model_type} encoder; "
                         f"its linear layers are named like {linears}.")
    return names


def replace_submodule(root: Any, name: str, module: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def check_max_length(encoder: Any, max_length: int) -> None:
    """Refuse a `max_length` beyond the encoder's position embeddings (an index error deep in a forward, else)."""
    positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
    if not isinstance(positions, int):
        return
    # RoBERTa-style position ids start after the padding index: two positions fewer are usable.
    padding = getattr(getattr(encoder, "embeddings", None), "padding_idx", None)
    usable = positions - (padding + 1 if isinstance(padding, int) else 0)
    if max_length > usable:
        raise ValueError(f"max_length={max_length} exceeds the {usable} positions the encoder has "
                         f"(max_position_embeddings={positions}); set --max_length {usable} or less.")
