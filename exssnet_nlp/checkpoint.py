"""The checkpoint format, the same for every method: JSON + safetensors only, written by one atomic swap.

Layout of a checkpoint directory (format version 3; 2 is read too)::

    exssnet_config.json      format version, method name and config, tasks in order (name, labels, file,
                             metadata), encoder reference and config, base-weight fingerprint, sha256 and
                             size of every tensor file, the trainer's resume state, extra_state
    task_000.safetensors     one file per finished task: what `model.task_state(task)` returns, i.e. its head
                             (`head.*`) and the method's own tensors (e.g. `mask.<module>` or `maskxor.<module>`
                             deflated mask bits and `values.<module>` owned weights for supermask methods, `lora.*`)
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

from .io import atomic_directory, json_bytes, recover_directory, write_bytes_atomic
from .references import portable_reference, resolve_reference
from .tasks import FINISHED

logger = logging.getLogger(__name__)

# 3: deflated and XOR-coded masks, values in `values_dtype`; a format-2 file (raw float32) reads as format 3.
FORMAT_VERSION = 3
READABLE_FORMATS = (2, 3)
CONFIG_NAME = "exssnet_config.json"
BASE_WEIGHTS_NAME = "base_model.safetensors"
SHARED_WEIGHTS_NAME = "shared.safetensors"
MODEL_CARD_NAME = "README.md"
TASK_FILE_RE = re.compile(r"task_\d{3,}\.safetensors")
# What `tokenizer.save_pretrained` writes: saved beside the config so that a checkpoint serves text on its own.
TOKENIZER_FILE_RE = re.compile(
    r"tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)"
    r"|vocab\.(txt|json)|merges\.txt|spiece\.model|sentencepiece\.bpe\.model|tokenizer\.model")
FINGERPRINT_DEFINITION = ("sha256 over the pristine encoder's state tensors in sorted name order, each preceded by "
                          "'name|dtype|shape', taken before any task changed a weight.")


CONFIG_DIGEST_KEY = "config_sha256"


def config_digest(data: dict[str, Any]) -> str:
    """sha256 of the config's canonical JSON (sorted keys, no spaces), its own digest entry left out."""
    body = {k: v for k, v in data.items() if k != CONFIG_DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def seal_config(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its digest entry set: the config `save_model` writes."""
    data[CONFIG_DIGEST_KEY] = config_digest(data)
    return data


def is_tensor_file_name(name: Any) -> bool:
    """A file name a checkpoint may list: ours, plain (no directory part), never a path outside the checkpoint."""
    return isinstance(name, str) and (name in (BASE_WEIGHTS_NAME, SHARED_WEIGHTS_NAME) or bool(TASK_FILE_RE.fullmatch(name)))


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
    return CONFIG_NAME in names and all(n in ours or TASK_FILE_RE.fullmatch(n) or TOKENIZER_FILE_RE.fullmatch(n) for n in names)


def is_local_dir(reference: str | None) -> bool:
    return bool(reference) and Path(reference).expanduser().is_dir()


def _encoder_record(model: Any, include_base: bool) -> dict[str, Any]:
    encoder = model.encoder
    # The reference the user gave (Hub id, `pkg:MODULE`, path), never a path inside this environment.
    reference = portable_reference(getattr(model, "encoder_reference", None) or model.base_model_name_or_path)
    has_pooler = getattr(encoder, "pooler", False)
    return {
        "name_or_path": reference,
        "revision": getattr(encoder.config, "_commit_hash", None),
        "model_type": model.model_type,
        "class": type(encoder).__name__,
        "dtype": str(next(t for t in encoder.state_dict().values() if t.is_floating_point()).dtype).removeprefix("torch."),
        # BERT-like encoders built with add_pooling_layer=False must be rebuilt the same way.
        "add_pooling_layer": None if has_pooler is False else has_pooler is not None,
        "config": {**json.loads(encoder.config.to_json_string(use_diff=False)), "_name_or_path": reference or ""},
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
    serving = getattr(model, "serving_info", {})
    tasks = [{"name": info.name, "num_labels": info.num_labels, "label_names": list(info.label_names),
              "file": task_file_name(i), "metadata": _json_safe(model.task_metadata(info.name), "task_metadata"),
              "serving": _json_safe(serving.get(info.name), "serving_info")}
             for i, info in enumerate(finished)]
    tokenizer = getattr(model, "tokenizer", None)

    def write(tmp: Path) -> None:
        files: dict[str, dict[str, Any]] = {}
        for name, data in blobs.items():
            _write_file(tmp, name, data, files)
        tokenizer_files = _save_tokenizer(tokenizer, tmp) if tokenizer is not None else None
        # Written last: a directory without it is never mistaken for a checkpoint.
        write_bytes_atomic(tmp / CONFIG_NAME, json_bytes(seal_config({
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
            "tokenizer": {"files": tokenizer_files} if tokenizer_files else None,
            "trainer_state": trainer_json,
            "extra_state": extra_json,
        })))

    return atomic_directory(save_directory, write, _is_checkpoint_dir, "exssnet-nlp checkpoint")


def _save_tokenizer(tokenizer: Any, directory: Path) -> dict[str, dict[str, Any]]:
    """Save `tokenizer` beside the config; the sha256 and size of each file it wrote."""
    before = {p.name for p in directory.iterdir()}
    tokenizer.save_pretrained(str(directory))
    files = {}
    for path in sorted(directory.iterdir()):
        if path.name in before:
            continue
        if not (path.is_file() and TOKENIZER_FILE_RE.fullmatch(path.name)):
            raise ValueError(f"tokenizer.save_pretrained wrote {path.name!r}, which a checkpoint does not hold; save the "
                             "tokenizer yourself beside the checkpoint, or set model.tokenizer = None.")
        data = path.read_bytes()
        files[path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return files


def load_tokenizer(directory: Path, record: dict[str, Any] | None) -> Any:
    """The tokenizer saved beside the config (checked against its recorded sha256 and size), or None."""
    files = (record or {}).get("files") or {}
    if not files:
        return None
    for name, expected in files.items():
        path = directory / name
        if not TOKENIZER_FILE_RE.fullmatch(name) or not path.is_file():
            raise ValueError(f"checkpoint {directory} is missing its tokenizer file {name} (listed in {CONFIG_NAME}); "
                             "copy or download the whole directory again.")
        data = path.read_bytes()
        if len(data) != expected.get("size") or hashlib.sha256(data).hexdigest() != expected.get("sha256"):
            raise ValueError(f"{path} does not match the size and sha256 recorded in {CONFIG_NAME}: the tokenizer file "
                             "is corrupt or was replaced. Copy or download the checkpoint again.")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def recover_checkpoint(path: str | os.PathLike) -> str | None:
    """Finish or undo a checkpoint save that a crash (even SIGKILL) interrupted; see `io.recover_directory`."""
    return recover_directory(path, lambda p: (p / CONFIG_NAME).is_file() and _is_checkpoint_dir(p))


# --- read ------------------------------------------------------------------------------------------
def resolve_checkpoint(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint directory, or the local snapshot of a Hub repo (only JSON/safetensors/md fetched)."""
    path = Path(path_or_repo_id).expanduser()
    if not path.exists() and path.parent.is_dir() and any(path.parent.glob(f".{path.name}.*-*")):
        recover_checkpoint(path)  # a save was killed between its two renames: the checkpoint is still there
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id=str(path_or_repo_id), revision=revision,
                                  allow_patterns=["*.json", "*.safetensors", "*.md", "*.txt", "*.model", "*.jinja"])
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
    if version not in READABLE_FORMATS:
        hint = ("it is newer: upgrade exssnet-nlp to load it" if isinstance(version, int) and version > FORMAT_VERSION
                else "format 1 was written by exssnet-nlp 0.1: load it with that version, or train again")
        raise ValueError(f"{path} has format_version={version!r}; this exssnet-nlp reads formats {READABLE_FORMATS} ({hint}).")
    for key in ("method", "method_config", "tasks", "encoder", "base_fingerprint", "files", CONFIG_DIGEST_KEY):
        if key not in data:
            raise ValueError(f"{path} lacks the {key!r} entry; the checkpoint is incomplete: save it again.")
    # Every setting changes predictions (pooling, labels, method...): an edited config is refused like a corrupt file.
    if data[CONFIG_DIGEST_KEY] != config_digest(data):
        raise ValueError(f"{path} does not match its {CONFIG_DIGEST_KEY}: the config was edited or is corrupt. Copy or "
                         "download the checkpoint again; to change settings, load the model and save it again.")
    _check_file_list(path, data)
    return data


def _check_file_list(path: Path, data: dict[str, Any]) -> None:
    """Every tensor file the config names is a plain name of ours with a recorded size and sha256."""
    files, tasks = data["files"], data["tasks"]
    if not isinstance(files, dict) or not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"{path}: `files` must be a mapping and `tasks` a list of mappings; the checkpoint is corrupt.")
    named = [t.get("file") for t in tasks] + [data.get(k) for k in ("shared_weights", "base_weights") if data.get(k)]
    for name in [*named, *files]:
        if not is_tensor_file_name(name):
            raise ValueError(f"{path} names the file {name!r}, which is not a tensor file of a checkpoint "
                             "(task_NNN.safetensors, shared.safetensors or base_model.safetensors inside its directory); "
                             "the checkpoint is corrupt or unsafe: do not load it.")
    for name in named:
        entry = files.get(name)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int)):
            raise ValueError(f"{path}: `files` has no size and sha256 for {name}; the checkpoint is incomplete or was "
                             "edited: copy or download it again.")


def read_checkpoint_config(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """The checkpoint's `exssnet_config.json` (validated format version)."""
    return read_config(resolve_checkpoint(path_or_repo_id, revision))


def read_extra_state(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """The `extra_state` dict given to `save_pretrained`."""
    return read_checkpoint_config(path_or_repo_id, revision).get("extra_state") or {}


def read_tensor_file(directory: Path, name: str, files: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A tensor file of the checkpoint, checked against the size and sha256 its config records."""
    if not is_tensor_file_name(name) or not isinstance(files.get(name), dict):
        raise ValueError(f"checkpoint {directory}: {name!r} is not a tensor file its config lists; the checkpoint is "
                         "corrupt or unsafe: do not load it.")
    path = directory / name
    if not path.is_file():
        raise ValueError(f"checkpoint {directory} is missing {name} (listed in {CONFIG_NAME}); the checkpoint is "
                         "incomplete: copy or download the whole directory again.")
    expected = files[name]
    size = path.stat().st_size  # checked before reading: a huge file is never loaded into memory
    if size != expected.get("size"):
        raise ValueError(f"{path} has {size} bytes but {expected.get('size')} were saved: the file is truncated or "
                         "corrupt. Copy or download the checkpoint again.")
    data = path.read_bytes()
    if len(data) != expected.get("size"):
        raise ValueError(f"{path} has {len(data)} bytes but {expected['size']} were saved: the file is truncated or "
                         "corrupt. Copy or download the checkpoint again.")
    if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise ValueError(f"{path} does not match the sha256 recorded in {CONFIG_NAME}: the file is corrupt or was "
                         "replaced. Copy or download the checkpoint again.")
    try:
        return safetensors_load(data)
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); copy or download the checkpoint again.") from None


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)\.")
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layers", "num_layers")


def _check_layer_count(cfg: dict[str, Any], state: dict[str, torch.Tensor], base_file: str) -> None:
    """The config's layer count must be the number of layers the stored weights hold (built before any check else)."""
    indices = [int(m.group(1)) for k in state for m in [_LAYER_INDEX.search(k)] if m]
    present = max(indices) + 1 if indices else 0
    for key in _LAYER_COUNT_KEYS:
        value = cfg.get(key)
        if value is not None and (not isinstance(value, int) or value != present):
            raise ValueError(f"the checkpoint's encoder config says {key}={value!r} but {base_file} holds {present} "
                             "layers; the checkpoint is corrupt or unsafe: do not load it.")


def build_encoder(record: dict[str, Any], directory: Path, base_file: str | None, files: dict[str, Any]) -> tuple[PreTrainedModel, bool]:
    """The encoder a checkpoint was learned on, and whether it comes from the checkpoint's own base weights."""
    dtype = getattr(torch, record.get("dtype") or "float32")
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if record.get("add_pooling_layer") is False else {}
    if base_file:
        cfg_dict = dict(record["config"])
        model_type = cfg_dict.pop("model_type", record.get("model_type"))
        cfg_dict.pop("_name_or_path", None)  # rebuilt in memory: a later save must store the weights again
        state = read_tensor_file(directory, base_file, files)
        _check_layer_count(cfg_dict, state, base_file)
        try:
            config = AutoConfig.for_model(model_type, **cfg_dict)
            with torch.device("meta"):  # shapes first, without memory: an untrusted config may claim anything
                shapes = {k: tuple(v.shape) for k, v in AutoModel.from_config(config, **kwargs).state_dict().items()}
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"the checkpoint's encoder config cannot build a model ({err}); the checkpoint is corrupt.") from None
        wrong = [k for k, v in state.items() if k in shapes and tuple(v.shape) != shapes[k]]
        if wrong:
            raise ValueError(f"{base_file} does not fit the stored encoder config ({wrong[:3]} have other shapes); the "
                             "checkpoint is corrupt: save it again.")
        built = AutoModel.from_config(config, **kwargs).to(dtype)
        missing, unexpected = built.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{base_file} does not fit the stored encoder config (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}); the checkpoint is corrupt: save it again.")
        return built, True
    reference = record.get("name_or_path")
    if not reference:
        raise ValueError("the checkpoint stores neither base weights nor an encoder name/path; pass encoder=... "
                         "(the model the tasks were learned on).")
    path = resolve_reference(reference)  # `pkg:MODULE` -> that package's model folder on this machine
    if not is_local_dir(path) and record.get("revision"):
        kwargs["revision"] = record["revision"]
    try:
        return AutoModel.from_pretrained(path, dtype=dtype, **kwargs), False
    except Exception as err:
        raise ValueError(f"could not load the base encoder {reference!r} ({type(err).__name__}: {err}); pass "
                         "encoder=... with the model the tasks were learned on, or save with include_base=True.") from err
