"""The checkpoint format, the same for every method: JSON + safetensors only, written by one atomic swap.

Layout of a checkpoint directory (format version 2)::

    exssnet_config.json      format version, method name and config, tasks in order (name, labels, file,
                             metadata), encoder reference and config, base-weight fingerprint, sha256 and
                             size of every tensor file, the trainer's resume state, extra_state
    task_000.safetensors     one file per finished task: what `model.task_state(task)` returns, i.e. its head
                             (`head.*`) and the method's own tensors (e.g. `mask.<module>` packed bits and
                             `values.<module>` owned weights for supermask methods, `lora.*` for LoRA)
    shared.safetensors       tensors every task shares that training changed (`model.shared_state()`:
                             e.g. `finetune`'s encoder); absent when there are none
    base_model.safetensors   the encoder's weights, only when it can't be re-loaded by name or path
                             (built in memory) or when asked for (include_base=True)
    README.md                model card, only in what push_to_hub uploads

Base fingerprint: sha256 over the pristine encoder's state tensors (sorted by name, each preceded by a
header `name|dtype|shape`), taken when the model is built, before any task changes a weight. Loading
re-builds the encoder from its reference and refuses it unless the fingerprint matches.

This module knows nothing of any method: it writes what the model gives and reads files back; building
the model is `methods.loading`'s job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from transformers import AutoConfig, AutoModel, PreTrainedModel

from .io import atomic_directory, json_bytes, write_bytes_atomic
from .tasks import FINISHED

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
CONFIG_NAME = "exssnet_config.json"
BASE_WEIGHTS_NAME = "base_model.safetensors"
SHARED_WEIGHTS_NAME = "shared.safetensors"
MODEL_CARD_NAME = "README.md"
TASK_FILE_RE = re.compile(r"task_\d{3,}\.safetensors")
FINGERPRINT_DEFINITION = ("sha256 over the pristine encoder's state tensors in sorted name order, each preceded by "
                          "'name|dtype|shape', taken before any task changed a weight.")


def task_file_name(index: int) -> str:
    return f"task_{index:03d}.safetensors"


def fingerprint_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of `tensors` in sorted name order (each preceded by a `name|dtype|shape` header)."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensors[name].shape)}\n".encode())
        if tensor.numel():
            hasher.update(memoryview(tensor.view(torch.uint8).numpy()))
    return hasher.hexdigest()


# One metadata entry only: safetensors writes its metadata map in hash order, so with two entries the same
# tensors could give other bytes (and another sha256) on every save. The config JSON names each file's task.
SAFETENSORS_METADATA = {"format": "pt"}


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors file of `tensors`: the same tensors always give the same bytes."""
    return safetensors_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=SAFETENSORS_METADATA)


def _write_file(directory: Path, name: str, data: bytes, files: dict[str, Any]) -> None:
    write_bytes_atomic(directory / name, data)
    files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _is_checkpoint_dir(path: Path) -> bool:
    """Only our own files: safe to replace wholesale (never wipe a directory holding anything else)."""
    names = {p.name for p in path.iterdir()}
    ours = {CONFIG_NAME, BASE_WEIGHTS_NAME, SHARED_WEIGHTS_NAME, MODEL_CARD_NAME}
    return CONFIG_NAME in names and all(n in ours or TASK_FILE_RE.fullmatch(n) for n in names)


def is_local_dir(reference: str | None) -> bool:
    return bool(reference) and Path(reference).expanduser().is_dir()


def _encoder_record(model: Any, include_base: bool) -> dict[str, Any]:
    encoder = model.encoder
    reference = model.base_model_name_or_path
    if is_local_dir(reference):
        reference = str(Path(reference).expanduser().absolute())  # a relative path would break from another cwd
    has_pooler = getattr(encoder, "pooler", False)
    return {
        "name_or_path": reference,
        "revision": getattr(encoder.config, "_commit_hash", None),
        "model_type": model.model_type,
        "class": type(encoder).__name__,
        "dtype": str(next(encoder.parameters()).dtype).removeprefix("torch."),
        # BERT-like encoders built with add_pooling_layer=False must be rebuilt the same way.
        "add_pooling_layer": None if has_pooler is False else has_pooler is not None,
        "config": json.loads(encoder.config.to_json_string(use_diff=False)),
        "base_weights_included": include_base,
    }


def _json_safe(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value if value is not None else {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-serialisable (dicts, lists, str, numbers, bool, None): {err}") from None


# --- save ------------------------------------------------------------------------------------------
def save_model(model: Any, save_directory: str | os.PathLike, include_base: bool = False,
               extra_state: dict[str, Any] | None = None, trainer_state: dict[str, Any] | None = None) -> Path:
    """Write the finished tasks of `model` (a `ContinualModel`) to `save_directory`, atomically.

    The encoder's weights are stored (`base_model.safetensors`) when `include_base` is true or when the
    encoder has no name or path to be re-loaded from. A task still being learned is skipped with a warning.
    `extra_state` (JSON-able) is returned by `read_extra_state`; `trainer_state` is what a resumed run needs.
    """
    extra_json = _json_safe(extra_state, "extra_state")
    trainer_json = _json_safe(trainer_state, "trainer_state") if trainer_state is not None else None
    config_json = _json_safe(model.config.to_dict(), f"the method config ({type(model.config).__name__})")
    learning = model.learning_task
    if learning is not None:
        logger.warning("Task %r is still being learned (state %r) and is not saved; finish_task() first to keep it.",
                       learning, model.task_info(learning).state)
    # Finished tasks always precede the (single) task being learned: add_task refuses a second one.
    finished = [info for info in model.task_infos if info.state == FINISHED]
    include_base = bool(include_base) or not model.base_model_name_or_path
    record = _encoder_record(model, include_base)
    # Tensors are gathered (and serialised) before anything is written: a failing method leaves nothing behind.
    blobs = {task_file_name(i): _safetensors_bytes(model.task_state(info.name)) for i, info in enumerate(finished)}
    shared = model.shared_state()
    if shared:
        blobs[SHARED_WEIGHTS_NAME] = _safetensors_bytes(shared)
    if include_base:
        blobs[BASE_WEIGHTS_NAME] = _safetensors_bytes(model.base_state())
    tasks = [{"name": info.name, "num_labels": info.num_labels, "label_names": list(info.label_names),
              "file": task_file_name(i), "metadata": _json_safe(model.task_metadata(info.name), "task_metadata")}
             for i, info in enumerate(finished)]

    def write(tmp: Path) -> None:
        files: dict[str, dict[str, Any]] = {}
        for name, data in blobs.items():
            _write_file(tmp, name, data, files)
        # Written last: a directory without it is never mistaken for a checkpoint.
        write_bytes_atomic(tmp / CONFIG_NAME, json_bytes({
            "format_version": FORMAT_VERSION,
            "library": "exssnet-nlp",
            "method": model.method,
            "method_config": config_json,
            "tasks": tasks,
            "encoder": record,
            "base_fingerprint": {"algorithm": "sha256", "value": model.base_fingerprint, "definition": FINGERPRINT_DEFINITION},
            "base_weights": BASE_WEIGHTS_NAME if include_base else None,
            "shared_weights": SHARED_WEIGHTS_NAME if shared else None,
            "files": files,
            "trainer_state": trainer_json,
            "extra_state": extra_json,
        }))

    return atomic_directory(save_directory, write, _is_checkpoint_dir, "exssnet-nlp checkpoint")


# --- read ------------------------------------------------------------------------------------------
def resolve_checkpoint(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint directory, or the local snapshot of a Hub repo (only JSON/safetensors/md fetched)."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id=str(path_or_repo_id), revision=revision,
                                  allow_patterns=["*.json", "*.safetensors", "*.md"])
    except Exception as err:  # invalid id, offline without cache, missing repo: one message for all
        raise ValueError(f"{path_or_repo_id!r} is not a local checkpoint directory and could not be fetched from the "
                         f"Hugging Face Hub ({type(err).__name__}: {err}). Check the path or the repo id/revision, "
                         "or download the checkpoint first.") from err
    return Path(local)


def read_config(directory: Path) -> dict[str, Any]:
    """The checkpoint's config JSON, checked for format version and required entries."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{directory} is not an exssnet-nlp checkpoint: {CONFIG_NAME} is missing. Save one with "
                         "model.save_pretrained(path), or point to the directory that holds it.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint is corrupt: save or download it again.") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version={version!r}; this exssnet-nlp reads format {FORMAT_VERSION} "
                         "(format 1 was written by exssnet-nlp 0.1: load it with that version, or train again).")
    for key in ("method", "method_config", "tasks", "encoder", "base_fingerprint", "files"):
        if key not in data:
            raise ValueError(f"{path} lacks the {key!r} entry; the checkpoint is incomplete: save it again.")
    return data


def read_checkpoint_config(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """The checkpoint's `exssnet_config.json` (validated format version)."""
    return read_config(resolve_checkpoint(path_or_repo_id, revision))


def read_extra_state(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """The `extra_state` dict given to `save_pretrained`."""
    return read_checkpoint_config(path_or_repo_id, revision).get("extra_state") or {}


def read_tensor_file(directory: Path, name: str, files: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A tensor file of the checkpoint, checked against the size and sha256 its config records."""
    path = directory / name
    if not path.is_file():
        raise ValueError(f"checkpoint {directory} is missing {name} (listed in {CONFIG_NAME}); the checkpoint is "
                         "incomplete: copy or download the whole directory again.")
    data = path.read_bytes()
    expected = files.get(name) or {}
    if "size" in expected and len(data) != expected["size"]:
        raise ValueError(f"{path} has {len(data)} bytes but {expected['size']} were saved: the file is truncated or "
                         "corrupt. Copy or download the checkpoint again.")
    if "sha256" in expected and hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise ValueError(f"{path} does not match the sha256 recorded in {CONFIG_NAME}: the file is corrupt or was "
                         "replaced. Copy or download the checkpoint again.")
    try:
        return safetensors_load(data)
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); copy or download the checkpoint again.") from None


def build_encoder(record: dict[str, Any], directory: Path, base_file: str | None, files: dict[str, Any]) -> tuple[PreTrainedModel, bool]:
    """The encoder a checkpoint was learned on, and whether it comes from the checkpoint's own base weights."""
    dtype = getattr(torch, record.get("dtype") or "float32")
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if record.get("add_pooling_layer") is False else {}
    if base_file:
        cfg_dict = dict(record["config"])
        model_type = cfg_dict.pop("model_type", record.get("model_type"))
        cfg_dict.pop("_name_or_path", None)  # rebuilt in memory: a later save must store the weights again
        config = AutoConfig.for_model(model_type, **cfg_dict)
        built = AutoModel.from_config(config, **kwargs).to(dtype)
        state = read_tensor_file(directory, base_file, files)
        missing, unexpected = built.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{base_file} does not fit the stored encoder config (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}); the checkpoint is corrupt: save it again.")
        return built, True
    reference = record.get("name_or_path")
    if not reference:
        raise ValueError("the checkpoint stores neither base weights nor an encoder name/path; pass encoder=... "
                         "(the model the tasks were learned on).")
    if not is_local_dir(reference) and record.get("revision"):
        kwargs["revision"] = record["revision"]
    try:
        return AutoModel.from_pretrained(reference, dtype=dtype, **kwargs), False
    except Exception as err:
        raise ValueError(f"could not load the base encoder {reference!r} ({type(err).__name__}: {err}); pass "
                         "encoder=... with the model the tasks were learned on, or save with include_base=True.") from err
