"""`load_pretrained`: any method's checkpoint back into its model, installing each task's tensors directly."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import PreTrainedModel

from ..checkpoint import build_encoder, load_tokenizer, read_config, read_tensor_file, resolve_checkpoint
from ..export import find_tokenizer
from ..references import resolve_reference
from .registry import get_method


def load_pretrained(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                    encoder: PreTrainedModel | str | None = None, device: str | torch.device | None = None,
                    return_trainer_state: bool = False) -> Any:
    """Rebuild the model saved by `save_pretrained` (a directory or a Hub repo id), whatever its method.

    The encoder is `encoder` if given, else the checkpoint's base weights, else `AutoModel.from_pretrained`
    of the stored reference; its fingerprint must match the stored one. Every file is read and verified
    before anything is built. Returns the model in eval mode with the last task current (and the trainer's
    resume state with `return_trainer_state=True`).
    """
    directory = resolve_checkpoint(path_or_repo_id, revision)
    data = read_config(directory)
    spec = get_method(data["method"])
    config = spec.make_config(spec.config_class.saved(data["method_config"]))
    files = data["files"]
    task_tensors = [read_tensor_file(directory, task["file"], files) for task in data["tasks"]]
    shared = read_tensor_file(directory, data["shared_weights"], files) if data.get("shared_weights") else {}

    from_base_file = False
    given = encoder  # what the caller passed (None, a model, or a Hub id / path), for the error message
    if encoder is None:
        encoder, from_base_file = build_encoder(data["encoder"], directory, data.get("base_weights"), files)
    model_class = spec.model_class
    if from_base_file:
        # The stored weights are already transformed (e.g. signed_constant): don't transform them twice.
        model = model_class.from_encoder(encoder, model_class.config_for_saved_base(config))
        model.config = config
        model.base_fingerprint = data["base_fingerprint"].get("value")
    else:
        model = model_class.from_encoder(encoder, config)
        stored = data["base_fingerprint"].get("value")
        if model.base_fingerprint != stored:
            if given is None:
                source = repr(data["encoder"].get("name_or_path"))  # re-loaded from the stored reference
            elif isinstance(given, (str, os.PathLike)):
                source = f"encoder={str(given)!r}"
            else:
                source = "the encoder passed as encoder="
            raise ValueError(f"the base weights from {source} do not match the ones the checkpoint was learned on "
                             f"(fingerprint {model.base_fingerprint[:12]}... != {str(stored)[:12]}...). Load the exact encoder "
                             "(same weights, dtype and revision) with encoder=..., or re-save the checkpoint with include_base=True.")
    if device is not None:
        model.to(device)
    model.load_shared_state(shared)
    for task, tensors in zip(data["tasks"], task_tensors, strict=True):
        model.install_task(task["name"], task["num_labels"], list(task.get("label_names") or []) or None, tensors,
                           task.get("metadata") or {}, task["file"])
    _install_serving(model, data, directory, reference_used=given is None and not from_base_file)
    if model.tasks:
        model.set_task(model.tasks[-1])
    model.eval()
    if return_trainer_state:
        return model, data.get("trainer_state")
    return model


def _install_serving(model: Any, data: dict[str, Any], directory: Any, reference_used: bool) -> None:
    """The tokenizer saved beside the config (else the encoder's own), each task's serving info (max_length)."""
    reference = data["encoder"].get("name_or_path")
    if reference_used:
        model.encoder_reference = reference  # re-saving keeps the reference as the user gave it
    model.tokenizer = load_tokenizer(directory, data.get("tokenizer"))
    if model.tokenizer is None and reference:  # checkpoints saved before tokenizers travelled with them
        try:
            model.tokenizer = find_tokenizer(resolve_reference(reference))
        except ValueError:  # a `pkg:` model not installed here: predict() will ask for a tokenizer
            model.tokenizer = None
    trained_length = ((data.get("trainer_state") or {}).get("args") or {}).get("max_length")
    for task in data["tasks"]:
        info = dict(task.get("serving") or {})
        if trained_length and "max_length" not in info:
            info["max_length"] = int(trained_length)  # checkpoints saved before serving info: the run's length
        if info:
            model.serving_info[task["name"]] = info
