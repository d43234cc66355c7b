"""Checkpoints of an `ExSSNetModel`: JSON + safetensors only, Hub upload, export of one task.

Layout of a checkpoint directory (format version 1)::

    exssnet_config.json      format version, ExSSNetConfig, tasks in order, encoder reference and config,
                             base-weight fingerprint, sha256 + size of every tensor file, extra_state
    task_000.safetensors     one file per finished task, tensors named by module (within the encoder):
                               mask.<module>    uint8, the task's mask as packed bits (masks.pack_bits)
                               values.<module>  weight dtype, 1-D: the weight values at the positions the
                                                task owns (mask & ~earlier masks), in flat-index order;
                                                the values the model computes with now (for ssnet,
                                                later tasks may have retrained them); absent for
                                                method="supsup" (weights never change)
                               head.<name>      the task head's tensors (dense.weight, out.bias, ...)
                               norm.<module>.weight, norm.<module>.bias
                                                the task's own LayerNorm affines, only with
                                                ExSSNetConfig.task_norms
    task_001.safetensors     ...
    base_model.safetensors   the encoder's weights, only when it can't be re-loaded by name or path
                             (built in memory) or when asked for (include_base=True)
    README.md                model card, only in what push_to_hub uploads

Base fingerprint (`base_fingerprint`): sha256 over the encoder's state tensors as wrapped (after
`weight_init`), in sorted name order, each preceded by a header `name|dtype|shape|excluded`. Finished
tasks of `exssnet`/`ssnet` write trained values into the shared weights, but only at positions inside
their masks, so for those methods the masked weights are hashed over the positions outside the union of
the saved tasks' masks (`supsup` changes nothing: everything is hashed). Every hashed byte is therefore
a pretrained byte, and an encoder freshly re-loaded from the same name or path reproduces the value,
given the union that the checkpoint's masks define.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from .config import ExSSNetConfig
from .masks import unpack_bits
from .model import FINISHED, ExSSNetModel

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "exssnet_config.json"
BASE_WEIGHTS_NAME = "base_model.safetensors"
MODEL_CARD_NAME = "README.md"
TASK_FILE_RE = re.compile(r"task_\d{3,}\.safetensors")
MASK_PREFIX, VALUES_PREFIX, HEAD_PREFIX, NORM_PREFIX = "mask.", "values.", "head.", "norm."
FINGERPRINT_DEFINITION = (
    "sha256 over the wrapped encoder's state tensors in sorted name order, each preceded by "
    "'name|dtype|shape|excluded'; for methods exssnet/ssnet the supermask layers' weights are hashed over the "
    "positions outside the union of the saved tasks' masks (the only positions no task ever wrote)."
)

# Export targets: where a CLS-pooled TaskHead's dense / out layers go in each architecture's
# `...ForSequenceClassification`, and the activation that class hard-codes between them.
EXPORT_HEADS: dict[str, tuple[str, str, str]] = {
    "bert": ("bert.pooler.dense", "classifier", "tanh"),
    "roberta": ("classifier.dense", "classifier.out_proj", "tanh"),
    "xlm-roberta": ("classifier.dense", "classifier.out_proj", "tanh"),
    "camembert": ("classifier.dense", "classifier.out_proj", "tanh"),
    "electra": ("classifier.dense", "classifier.out_proj", "gelu"),
    "distilbert": ("pre_classifier", "classifier", "relu"),
}


def task_file_name(index: int) -> str:
    return f"task_{index:03d}.safetensors"


# --- small I/O helpers ---------------------------------------------------------------------------
def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """Serialise `tensors` to `path`; returns the file's sha256 and size (recorded in the config JSON)."""
    data = safetensors_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    _fsync_write(path, data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _write_json(obj: Any, path: Path) -> None:
    _fsync_write(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def _is_checkpoint_dir(path: Path) -> bool:
    """Only our own files: safe to replace wholesale (never wipe a directory holding anything else)."""
    names = {p.name for p in path.iterdir()}
    ours = {CONFIG_NAME, BASE_WEIGHTS_NAME, MODEL_CARD_NAME}
    return CONFIG_NAME in names and all(n in ours or TASK_FILE_RE.fullmatch(n) for n in names)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _atomic_directory(target: str | os.PathLike, write: Callable[[Path], None], replaceable: Callable[[Path], bool],
                      what: str) -> Path:
    """Run `write(tmp)` in a fresh sibling directory, then rename it to `target`.

    An existing `target` is swapped out only after `write` succeeded, and only if it is empty or
    `replaceable`. A failure removes the temporary directory; a crash leaves only a hidden
    `.<name>.tmp-*` sibling, never a half-written `target`.
    """
    target = Path(target).expanduser().absolute()
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{target} exists and is not a directory; choose another {what} path.")
        if any(target.iterdir()) and not replaceable(target):
            raise ValueError(f"{target} is a non-empty directory that does not hold a {what}; refusing to replace it. "
                             "Choose an empty or new directory.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


# --- what a checkpoint holds -----------------------------------------------------------------------
def _encoder_tensors(model: ExSSNetModel) -> dict[str, torch.Tensor]:
    """The encoder's persistent state under plain-`nn.Linear`/`nn.LayerNorm` names: per-task buffers and the
    tensors of a task still being learned (scores, exclusive values, norms) are dropped; they live in task
    files or nowhere."""
    per_task = {**model.supermask_layers(), **model.task_norm_layers()}
    tensors = {}
    for name, tensor in model.encoder.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if owner in per_task and leaf not in ("weight", "bias"):
            continue
        tensors[name] = tensor
    return tensors


def _exclusive_positions(packed_masks: Sequence[torch.Tensor], shape: torch.Size) -> list[torch.Tensor]:
    """Per task, the positions it owns: its mask minus the union of the earlier tasks' masks."""
    owned, union = [], torch.zeros(shape, dtype=torch.bool)
    for packed in packed_masks:
        mask = unpack_bits(packed.cpu(), shape)
        owned.append(mask & ~union)
        union |= mask
    return owned


def _fingerprint(tensors: dict[str, torch.Tensor], excluded: dict[str, torch.Tensor]) -> str:
    """sha256 of `tensors` (sorted by name); `excluded[name]` (bool) removes positions from a tensor."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous().reshape(-1)
        skip = excluded.get(name)
        n_skipped = 0
        if skip is not None:
            skip = skip.cpu().reshape(-1)
            n_skipped = int(skip.sum())
            tensor = tensor[~skip]
        header = f"{name}|{tensors[name].dtype}|{tuple(tensors[name].shape)}|{n_skipped}\n"
        hasher.update(header.encode("utf-8"))
        if tensor.numel():
            hasher.update(memoryview(tensor.view(torch.uint8).numpy()))
    return hasher.hexdigest()


def _changed_positions(model: ExSSNetModel, packed: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Weight positions that learning may have changed: the union of the given masks (none for supsup)."""
    if model.config.method == "supsup":
        return {}
    excluded = {}
    for name, layer in model.supermask_layers().items():
        union = torch.zeros(layer.weight.shape, dtype=torch.bool)
        for p in packed.get(name, []):
            union |= unpack_bits(p.cpu(), layer.weight.shape)
        excluded[f"{name}.weight"] = union
    return excluded


def _finished_packed_masks(model: ExSSNetModel, count: int) -> dict[str, list[torch.Tensor]]:
    return {name: [layer.packed_mask(i) for i in range(count)] for name, layer in model.supermask_layers().items()}


def _num_saved_tasks(model: ExSSNetModel) -> int:
    # Finished tasks always precede the (single) task being learned: add_task refuses a second one.
    return sum(1 for info in model.task_infos if info.state == FINISHED)


def base_fingerprint(model: ExSSNetModel) -> str:
    """sha256 of the base weights the finished tasks' masks were learned on (see the module docstring)."""
    count = _num_saved_tasks(model)
    return _fingerprint(_encoder_tensors(model), _changed_positions(model, _finished_packed_masks(model, count)))


def _is_local_dir(reference: str | None) -> bool:
    return bool(reference) and Path(reference).expanduser().is_dir()


def _encoder_record(model: ExSSNetModel, include_base: bool) -> dict[str, Any]:
    encoder = model.encoder
    reference = model.base_model_name_or_path
    if _is_local_dir(reference):
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


# --- save ------------------------------------------------------------------------------------------
def save_pretrained(model: ExSSNetModel, save_directory: str | os.PathLike, include_base: bool = False,
                    extra_state: dict[str, Any] | None = None) -> Path:
    """Write the finished tasks of `model` to `save_directory` (JSON + safetensors, atomically).

    The encoder's weights are stored (`base_model.safetensors`) when `include_base` is true or when the
    encoder has no name or path to be re-loaded from. A task still being learned is skipped with a
    warning. `extra_state` (JSON-able) is stored in the config JSON and returned by `read_extra_state`.
    """
    if not isinstance(model, ExSSNetModel):
        raise ValueError(f"save_pretrained needs an ExSSNetModel, got {type(model).__name__}.")
    try:
        extra_json = json.loads(json.dumps(extra_state or {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"extra_state must be JSON-serialisable (dicts, lists, str, numbers, bool, None): {err}") from None
    try:
        json.dumps(model.config.to_dict())
    except (TypeError, ValueError) as err:
        raise ValueError(f"model.config (ExSSNetConfig.extra included) must be JSON-serialisable: {err}") from None
    learning = model.learning_task
    if learning is not None:
        logger.warning("Task %r is still being learned (state %r) and is not saved; finish_task() first to keep it.",
                       learning, model.task_info(learning).state)
    count = _num_saved_tasks(model)
    layers = model.supermask_layers()
    for name, layer in layers.items():
        if layer.num_finished != count:
            raise ValueError(f"layer {name} holds {layer.num_finished} finished masks but the model has {count} "
                             "finished tasks; the model is inconsistent and can't be saved.")
    reference = model.base_model_name_or_path
    include_base = bool(include_base) or not reference
    packed = _finished_packed_masks(model, count)
    base_tensors = _encoder_tensors(model)
    fingerprint = _fingerprint(base_tensors, _changed_positions(model, packed))
    record = _encoder_record(model, include_base)
    stores_values = model.config.method != "supsup"

    def write(tmp: Path) -> None:
        files: dict[str, dict[str, Any]] = {}
        tasks = []
        owned = {name: _exclusive_positions(packed[name], layer.weight.shape) for name, layer in layers.items()}
        for index in range(count):
            info = model.task_infos[index]
            tensors: dict[str, torch.Tensor] = {}
            for name, layer in layers.items():
                tensors[MASK_PREFIX + name] = packed[name][index].clone()
                if stores_values:
                    # Current values, not the ones at finish time: for ssnet later tasks may have
                    # retrained them, and the model computes with what is there now.
                    positions = owned[name][index].reshape(-1).nonzero().squeeze(1)
                    tensors[VALUES_PREFIX + name] = layer.weight.detach().cpu().reshape(-1)[positions].clone()
            for key, tensor in model.heads[str(index)].state_dict().items():
                tensors[HEAD_PREFIX + key] = tensor.clone()
            for name, norm in model.task_norm_layers().items():
                weight, bias = norm.task_affine(index)
                tensors[f"{NORM_PREFIX}{name}.weight"] = weight.detach().cpu().clone()
                tensors[f"{NORM_PREFIX}{name}.bias"] = bias.detach().cpu().clone()
            file_name = task_file_name(index)
            files[file_name] = _write_safetensors(tensors, tmp / file_name, {"format": "pt", "task": info.name})
            tasks.append({"name": info.name, "num_labels": info.num_labels, "label_names": list(info.label_names),
                          "file": file_name})
        if include_base:
            files[BASE_WEIGHTS_NAME] = _write_safetensors({k: v.clone() for k, v in base_tensors.items()},
                                                          tmp / BASE_WEIGHTS_NAME, {"format": "pt"})
        # Written last: a directory without it is never mistaken for a checkpoint.
        _write_json({
            "format_version": FORMAT_VERSION,
            "library": "exssnet-nlp",
            "exssnet_config": model.config.to_dict(),
            "tasks": tasks,
            "encoder": record,
            "base_fingerprint": {"algorithm": "sha256", "value": fingerprint, "definition": FINGERPRINT_DEFINITION},
            "base_weights": BASE_WEIGHTS_NAME if include_base else None,
            "files": files,
            "extra_state": extra_json,
        }, tmp / CONFIG_NAME)

    return _atomic_directory(save_directory, write, _is_checkpoint_dir, "ExSSNeT checkpoint")


# --- load ------------------------------------------------------------------------------------------
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


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{directory} is not an ExSSNeT checkpoint: {CONFIG_NAME} is missing. Save one with "
                         "model.save_pretrained(path), or point to the directory that holds it.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint is corrupt: save or download it again.") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version={version!r}; this exssnet-nlp reads format {FORMAT_VERSION}. "
                         "Upgrade exssnet-nlp (or re-save the model with this version).")
    for key in ("exssnet_config", "tasks", "encoder", "base_fingerprint", "files"):
        if key not in data:
            raise ValueError(f"{path} lacks the {key!r} entry; the checkpoint is incomplete: save it again.")
    return data


def read_checkpoint_config(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """The checkpoint's `exssnet_config.json` (validated format version)."""
    return _read_config(resolve_checkpoint(path_or_repo_id, revision))


def read_extra_state(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """The `extra_state` dict given to `save_pretrained`."""
    return read_checkpoint_config(path_or_repo_id, revision).get("extra_state") or {}


def _read_tensor_file(directory: Path, name: str, files: dict[str, Any]) -> dict[str, torch.Tensor]:
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


def _build_encoder(record: dict[str, Any], directory: Path, base_file: str | None, files: dict[str, Any],
                   encoder: PreTrainedModel | str | None) -> tuple[PreTrainedModel | str, bool]:
    """The encoder to wrap, and whether it comes from the checkpoint's own base weights."""
    if encoder is not None:
        return encoder, False
    dtype = getattr(torch, record.get("dtype") or "float32")
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if record.get("add_pooling_layer") is False else {}
    if base_file:
        cfg_dict = dict(record["config"])
        model_type = cfg_dict.pop("model_type", record.get("model_type"))
        cfg_dict.pop("_name_or_path", None)  # rebuilt in memory: a later save must store the weights again
        config = AutoConfig.for_model(model_type, **cfg_dict)
        built = AutoModel.from_config(config, **kwargs).to(dtype)
        state = _read_tensor_file(directory, base_file, files)
        missing, unexpected = built.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{base_file} does not fit the stored encoder config (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}); the checkpoint is corrupt: save it again.")
        return built, True
    reference = record.get("name_or_path")
    if not reference:
        raise ValueError("the checkpoint stores neither base weights nor an encoder name/path; pass encoder=... "
                         "(the model the tasks were learned on).")
    if not _is_local_dir(reference) and record.get("revision"):
        kwargs["revision"] = record["revision"]
    try:
        return AutoModel.from_pretrained(reference, dtype=dtype, **kwargs), False
    except Exception as err:
        raise ValueError(f"could not load the base encoder {reference!r} ({type(err).__name__}: {err}); pass "
                         "encoder=... with the model the tasks were learned on, or save with include_base=True.") from err


def _install_task(model: ExSSNetModel, task: dict[str, Any], index: int, tensors: dict[str, torch.Tensor],
                  owned: dict[str, torch.Tensor], file_name: str) -> None:
    """Re-create one finished task through the model's own learning API, so every invariant holds.

    add_task -> begin_mask_phase -> scores set so that their top-k is exactly the saved mask ->
    (begin_weight_phase -> trainable values := saved values at the owned positions) -> head := saved
    head -> finish_task (writes values into the weights, packs the mask, freezes the head). Reaches into
    `model.heads` and each layer's `exclusive_index`/`exclusive_values` only to set tensors.
    """
    model.add_task(task["name"], int(task["num_labels"]), list(task.get("label_names") or []) or None)
    model.begin_mask_phase()
    layers = model.supermask_layers()
    for name, layer in layers.items():
        mask = unpack_bits(tensors[MASK_PREFIX + name], layer.weight.shape).to(layer.weight.device)
        try:
            layer.set_scores_from_mask(mask)
        except ValueError as err:
            raise ValueError(f"{file_name}: mask of {name} is invalid ({err}); the checkpoint is corrupt.") from None
    if model.config.method != "supsup":
        model.begin_weight_phase()
        for name, layer in layers.items():
            values = tensors[VALUES_PREFIX + name]
            # exssnet trains exactly the owned positions; ssnet trains the whole mask, of which the
            # owned ones are the positions no earlier task already restored.
            select = owned[name].reshape(-1).to(layer.exclusive_index.device)[layer.exclusive_index]
            with torch.no_grad():
                layer.exclusive_values[select] = values.to(layer.exclusive_values.device)
    _install_norms(model, tensors, file_name)
    head = model.heads[str(index)]
    head_state = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    dtypes = {v.dtype for v in head_state.values()}
    if len(dtypes) == 1:
        head.to(dtypes.pop())
    try:
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{file_name}: the head tensors do not fit task {task['name']!r} ({err}).") from None
    model.finish_task()


def _install_norms(model: ExSSNetModel, tensors: dict[str, torch.Tensor], file_name: str) -> None:
    """The learning task's own LayerNorm affines := the saved ones (checkpoints with `task_norms` only)."""
    norms = model.task_norm_layers()
    stored = {k[len(NORM_PREFIX):] for k in tensors if k.startswith(NORM_PREFIX)}
    expected = {f"{name}.{leaf}" for name in norms for leaf in ("weight", "bias")}
    if stored != expected:
        missing, extra = sorted(expected - stored), sorted(stored - expected)
        raise ValueError(f"{file_name}: per-task norms do not match the model (missing {missing[:4]}, unexpected {extra[:4]}); "
                         "the checkpoint is corrupt, or its exssnet_config.json disagrees with its task files.")
    with torch.no_grad():
        for name, norm in norms.items():
            for leaf, param in (("weight", norm.learning_weight), ("bias", norm.learning_bias)):
                value = tensors[f"{NORM_PREFIX}{name}.{leaf}"]
                if value.shape != param.shape:
                    raise ValueError(f"{file_name}: norm {name}.{leaf} has shape {tuple(value.shape)}, the encoder's "
                                     f"{tuple(param.shape)}; the checkpoint belongs to another encoder or is corrupt.")
                param.copy_(value.to(param))


def _read_masks(model: ExSSNetModel, tasks: list[dict[str, Any]],
                task_tensors: list[dict[str, torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Module name -> packed mask of every task, validated against this encoder's masked layers."""
    layers = model.supermask_layers()
    packed: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for task, tensors in zip(tasks, task_tensors, strict=True):
        names = {k[len(MASK_PREFIX):] for k in tensors if k.startswith(MASK_PREFIX)}
        if names != set(layers):
            missing, extra = sorted(set(layers) - names), sorted(names - set(layers))
            raise ValueError(f"{task['file']}: masks do not match the encoder's masked layers (missing {missing[:4]}, "
                             f"unexpected {extra[:4]}); the checkpoint is corrupt, or was saved with other "
                             "target_modules or another encoder architecture.")
        for name, layer in layers.items():
            mask = tensors[MASK_PREFIX + name]
            expected = (layer.weight.numel() + 7) // 8
            if mask.dtype != torch.uint8 or mask.numel() != expected:
                raise ValueError(f"{task['file']}: mask of {name} has {mask.numel()} {mask.dtype} entries; this encoder's "
                                 f"layer {tuple(layer.weight.shape)} needs {expected} uint8 bytes. The checkpoint belongs "
                                 "to another encoder or is corrupt.")
            kept = int(unpack_bits(mask, layer.weight.shape).sum())
            if kept != layer.k:  # every mask keeps exactly k = round(density * numel) weights
                raise ValueError(f"{task['file']}: mask of {name} keeps {kept} weights; density {model.config.density} "
                                 f"keeps exactly {layer.k}. The checkpoint is corrupt.")
            packed[name].append(mask)
    return packed


def _check_values(model: ExSSNetModel, tensors: dict[str, torch.Tensor], file_name: str,
                  owned: dict[str, torch.Tensor]) -> None:
    if model.config.method == "supsup":
        return
    for name, layer in model.supermask_layers().items():
        values = tensors.get(VALUES_PREFIX + name)
        need = int(owned[name].sum())
        if values is None or values.dim() != 1 or values.numel() != need or values.dtype != layer.weight.dtype:
            got = "nothing" if values is None else f"{tuple(values.shape)} {values.dtype}"
            raise ValueError(f"{file_name}: values of {name} should be {need} {layer.weight.dtype} entries, got {got}; "
                             "the checkpoint is corrupt.")


def load_pretrained(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                    encoder: PreTrainedModel | str | None = None, device: str | torch.device | None = None) -> ExSSNetModel:
    """Rebuild an `ExSSNetModel` saved by `save_pretrained` (a directory or a Hub repo id).

    The encoder is `encoder` if given, else the checkpoint's base weights, else `AutoModel.from_pretrained`
    of the stored reference. Its fingerprint must match the stored one. Returns the model in eval mode
    with the last task current.
    """
    directory = resolve_checkpoint(path_or_repo_id, revision)
    data = _read_config(directory)
    config = ExSSNetConfig.from_dict(data["exssnet_config"])
    files = data["files"]
    # Every file is read and verified before anything is built: a bad checkpoint fails fast.
    task_tensors = [_read_tensor_file(directory, task["file"], files) for task in data["tasks"]]

    built, from_base_file = _build_encoder(data["encoder"], directory, data.get("base_weights"), files, encoder)
    if from_base_file:
        # The stored weights are the wrapped ones (after weight_init): don't transform them twice.
        model = ExSSNetModel.from_encoder(built, dataclasses.replace(config, weight_init="pretrained"))
        model.config = config
    else:
        model = ExSSNetModel.from_encoder(built, config)
    if device is not None:
        model.to(device)  # before any task: heads are created on the encoder's device

    # Masks first (they define which positions the fingerprint skips), then the base check, then values.
    packed = _read_masks(model, data["tasks"], task_tensors)
    stored = data["base_fingerprint"].get("value")
    actual = _fingerprint(_encoder_tensors(model), _changed_positions(model, packed))
    if stored != actual:
        source = "the encoder passed as encoder=" if encoder is not None else (
            f"{data.get('base_weights')}" if from_base_file else f"{data['encoder'].get('name_or_path')!r}")
        raise ValueError(f"the base weights from {source} do not match the ones the checkpoint's masks were learned on "
                         f"(fingerprint {actual[:12]}... != {str(stored)[:12]}...). Load the exact encoder (same "
                         "weights, dtype and revision) with encoder=..., or re-save the checkpoint with include_base=True.")

    layers = model.supermask_layers()
    owned = {name: _exclusive_positions(packed[name], layer.weight.shape) for name, layer in layers.items()}
    for index, (task, tensors) in enumerate(zip(data["tasks"], task_tensors, strict=True)):
        _check_values(model, tensors, task["file"], {n: o[index] for n, o in owned.items()})
    for index, (task, tensors) in enumerate(zip(data["tasks"], task_tensors, strict=True)):
        _install_task(model, task, index, tensors, {n: o[index] for n, o in owned.items()}, task["file"])
    if model.tasks:
        model.set_task(model.tasks[-1])
    return model.eval()


# --- Hub -------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def model_card(model: ExSSNetModel, results: dict[str, Any] | None = None) -> str:
    """The README.md model card: metadata (library, tags, base model) and a summary of tasks and results.

    `results` (optional): {"tasks": [...], "accuracy_matrix": [[...]], "bwt": float, "fwt": float,
    "average_accuracy": float}, accuracy_matrix[i][j] = accuracy on task j after learning task i.
    """
    from huggingface_hub import ModelCard, ModelCardData

    reference = model.base_model_name_or_path
    hub_base = reference if reference and not _is_local_dir(reference) else None
    tasks = [t for t in model.task_infos if t.state == FINISHED]
    data = ModelCardData(library_name="exssnet-nlp", base_model=hub_base, pipeline_tag="text-classification",
                         tags=["exssnet", "continual-learning", "supermask", model.config.method, model.model_type])
    lines = [
        "# ExSSNeT continual-learning model", "",
        f"A `{model.model_type}` encoder with one supermask per task, saved by "
        "[exssnet-nlp](https://pypi.org/project/exssnet-nlp/).", "",
        f"- Base model: `{reference or 'built in memory (weights included)'}`",
        f"- Method: `{model.config.method}`",
        f"- Density: {model.config.density} (fraction of each masked layer's weights a task keeps)",
        f"- Pooling: `{model.config.pooling}`",
        f"- Masked layers: {len(model.supermask_layers())}", "",
        "## Tasks (learning order)", "",
        "| # | Task | Labels | Label names |", "|---|---|---|---|",
    ]
    for i, info in enumerate(tasks):
        names = ", ".join(info.label_names)
        lines.append(f"| {i} | {info.name} | {info.num_labels} | {names} |")
    if results:
        names = list(results.get("tasks") or [t.name for t in tasks])
        matrix = results.get("accuracy_matrix") or []
        lines += ["", "## Results", "", "Accuracy on each task (column) after learning each task (row).", "",
                  "| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for i, row in enumerate(matrix):
            label = names[i] if i < len(names) else str(i)
            cells = [_fmt(row[j]) if j < len(row) else "–" for j in range(len(names))]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", f"- Average accuracy: {_fmt(results.get('average_accuracy'))}",
                  f"- Backward transfer (BWT): {_fmt(results.get('bwt'))}",
                  f"- Forward transfer (FWT): {_fmt(results.get('fwt'))}"]
    lines += ["", "## Usage", "", "```python", "from exssnet_nlp import ExSSNetModel", "",
              'model = ExSSNetModel.from_pretrained("<repo id>")',
              f'logits = model(**inputs, task="{tasks[-1].name if tasks else "<task>"}").logits', "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def push_to_hub(model: ExSSNetModel, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload ExSSNeT checkpoint", results: dict[str, Any] | None = None,
                include_base: bool | None = None, extra_state: dict[str, Any] | None = None) -> str:
    """Save `model` with a model card and upload it to `repo_id`; returns the repo URL.

    `include_base=None` stores the base weights when others couldn't load the encoder by name (built in
    memory, or loaded from a local directory).
    """
    from huggingface_hub import HfApi

    if include_base is None:
        include_base = _is_local_dir(model.base_model_name_or_path)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="exssnet-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "checkpoint", include_base=include_base, extra_state=extra_state)
        (folder / MODEL_CARD_NAME).write_text(model_card(model, results), encoding="utf-8")
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # delete_patterns: a base file or task file of an older upload that this one lacks goes away.
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model",
                          delete_patterns=["task_*.safetensors", BASE_WEIGHTS_NAME])
    return str(url)


# --- export ----------------------------------------------------------------------------------------
def export_task(model: ExSSNetModel, task: str, output_dir: str | os.PathLike | None = None) -> PreTrainedModel:
    """A plain `...ForSequenceClassification` for one finished task: masked weights merged (W * mask).

    Needs `pooling="cls"` and the head activation of the architecture's own classification head
    (the default). With `output_dir`, the model (and the tokenizer found at the encoder's path, if any)
    is saved there atomically, ready for `AutoModelForSequenceClassification.from_pretrained`.
    """
    index = model.task_index(task)
    info = model.task_infos[index]
    if info.state != FINISHED:
        raise ValueError(f"task {task!r} is still being learned (state {info.state!r}); finish_task() before exporting.")
    if model.model_type not in EXPORT_HEADS:
        raise ValueError(f"export supports model types {sorted(EXPORT_HEADS)}, not {model.model_type!r}; use the "
                         "ExSSNeT checkpoint (save_pretrained) instead.")
    dense_path, out_path, activation = EXPORT_HEADS[model.model_type]
    if model.config.pooling != "cls":
        raise ValueError(f"export needs pooling='cls' (got {model.config.pooling!r}): no stock transformers "
                         "sequence-classification model mean-pools. Use the ExSSNeT checkpoint for this model, or "
                         "export the encoder alone and mean-pool yourself.")
    used = model.config.resolved_head_activation(model.model_type)
    if used != activation:
        raise ValueError(f"export to {model.model_type} needs head_activation={activation!r} (its classification "
                         f"head hard-codes it); this model uses {used!r}.")

    cfg = copy.deepcopy(model.encoder.config)
    cfg.id2label = dict(enumerate(info.label_names))
    cfg.label2id = {name: i for i, name in enumerate(info.label_names)}
    cfg.problem_type = "single_label_classification"
    if model.model_type == "distilbert":
        cfg.seq_classif_dropout = model.config.head_dropout
    else:
        cfg.classifier_dropout = model.config.head_dropout
    device, dtype = model._device_dtype()
    exported = AutoModelForSequenceClassification.from_config(cfg).to(device=device, dtype=dtype)

    layers, norms = model.supermask_layers(), model.task_norm_layers()
    state = {}
    with torch.no_grad():
        for name, tensor in _encoder_tensors(model).items():
            owner, _, leaf = name.rpartition(".")
            if owner in layers and leaf == "weight":
                tensor = layers[owner].effective_weight(index)
            elif owner in norms:
                tensor = norms[owner].task_affine(index)[0 if leaf == "weight" else 1]
            state[name] = tensor
        head = model.heads[str(index)]
        base_prefix = exported.base_model_prefix + "."
        mapped = {dense_path: head.dense, out_path: head.out}
        missing, unexpected = exported.base_model.load_state_dict(state, strict=False)
        allowed = {p[len(base_prefix):] for p in mapped if p.startswith(base_prefix)}
        bad_missing = [k for k in missing if k.rpartition(".")[0] not in allowed]
        # ExSSNeT never uses the encoder's own pooler; classes without one (RoBERTa's) just drop it.
        unexpected = [k for k in unexpected if not k.startswith("pooler.")]
        if bad_missing or unexpected:
            raise ValueError(f"the encoder's weights don't fit {type(exported).__name__} (missing {bad_missing[:4]}, "
                             f"unexpected {unexpected[:4]}).")
        for path, source in mapped.items():
            target = exported.get_submodule(path)
            if not isinstance(target, nn.Linear) or target.weight.shape != source.weight.shape:
                raise ValueError(f"{type(exported).__name__}.{path} does not fit the task head's {tuple(source.weight.shape)}.")
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
    exported.eval()

    if output_dir is not None:
        reference = model.base_model_name_or_path
        if reference and _is_local_dir(reference) and Path(output_dir).expanduser().absolute() == Path(reference).absolute():
            raise ValueError(f"output_dir {output_dir} is the base encoder's own directory; export elsewhere.")
        tokenizer = _find_tokenizer(reference)

        def write(tmp: Path) -> None:
            exported.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)

        _atomic_directory(output_dir, write, _is_model_dir, "transformers model")
    return exported


def _find_tokenizer(*references: str | os.PathLike | None) -> Any:
    from transformers import AutoTokenizer

    for reference in references:
        if not reference:
            continue
        try:
            return AutoTokenizer.from_pretrained(str(reference))
        except Exception as err:  # no tokenizer there (or offline): the caller decides what to do
            logger.info("no tokenizer at %s: %s", reference, err)
    return None


# --- inference helpers ------------------------------------------------------------------------------
def load_for_inference(checkpoint: str | os.PathLike, revision: str | None = None,
                       device: str | torch.device | None = None) -> tuple[ExSSNetModel, Any]:
    """(model in eval mode, tokenizer or None): the tokenizer from the checkpoint directory if it holds
    one, else from the encoder's stored name or path."""
    directory = resolve_checkpoint(checkpoint, revision)
    model = load_pretrained(directory, device=device)
    stored = _read_config(directory)["encoder"].get("name_or_path")
    local = directory if (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file() else None
    tokenizer = _find_tokenizer(local, stored)
    if tokenizer is None:
        logger.warning("No tokenizer found for %s; pass one to predict() yourself.", checkpoint)
    return model, tokenizer


def predict(model: ExSSNetModel, tokenizer: Any, task: str, texts: str | Sequence[str], max_length: int = 128,
            batch_size: int = 32) -> list[dict[str, Any]]:
    """[{"label": name, "score": probability}] for each text under `task` (eval mode, no gradients)."""
    if tokenizer is None:
        raise ValueError("predict needs a tokenizer; load one with transformers.AutoTokenizer.from_pretrained(...).")
    texts = [texts] if isinstance(texts, str) else list(texts)
    info = model.task_info(task)
    device = model._device_dtype()[0]
    was_training = model.training
    model.eval()
    predictions: list[dict[str, Any]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()
                         if k in ("input_ids", "attention_mask", "token_type_ids")}
                probs = model(**batch, task=task).logits.float().softmax(dim=-1)
                scores, labels = probs.max(dim=-1)
                predictions += [{"label": info.label_names[int(i)], "score": float(s)} for s, i in zip(scores, labels, strict=True)]
    finally:
        model.train(was_training)
    return predictions


def evaluate_checkpoint(checkpoint: str | os.PathLike, config_file: str | None = None, tasks: Sequence[str] | None = None,
                        eval_samples_per_class: int | None = None, batch_size: int = 64, max_length: int = 128,
                        seed: int = 0) -> dict[str, float]:
    """Test accuracy of each task of a checkpoint, with the task data named in a training config."""
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    from .data import load_task, resolve_task_spec, tokenize_dataset
    from .trainer import load_training_config

    if config_file is None:
        raise ValueError("evaluate needs the task data: pass --config with the training YAML that lists the tasks.")
    model, tokenizer = load_for_inference(checkpoint)
    if tokenizer is None:
        raise ValueError(f"no tokenizer found for checkpoint {str(checkpoint)!r}; save one beside it (tokenizer.save_pretrained).")
    _, specs = load_training_config(config_file, [])
    wanted = list(tasks) if tasks else model.tasks
    unknown = sorted(set(wanted) - set(model.tasks))
    if unknown:
        raise ValueError(f"task(s) {unknown} are not in the checkpoint; it holds {model.tasks}.")
    by_name = {resolve_task_spec({"name": s} if isinstance(s, str) else s).name: s for s in specs}
    missing = [t for t in wanted if t not in by_name]
    if missing:
        raise ValueError(f"task(s) {missing} have no data in {config_file!r}; add them to its `tasks` list.")
    device = next(model.parameters()).device
    accuracies: dict[str, float] = {}
    for name in wanted:
        data = load_task(resolve_task_spec(by_name[name] if not isinstance(by_name[name], str) else {"name": name}),
                         eval_samples_per_class=eval_samples_per_class, validation_samples_per_class=0, seed=seed)
        loader = DataLoader(tokenize_dataset(data.test, tokenizer, max_length), batch_size=batch_size,
                            collate_fn=DataCollatorWithPadding(tokenizer))
        correct = total = 0
        with torch.no_grad():
            for batch in loader:
                labels = batch.pop("labels").to(device)
                logits = model(**{k: v.to(device) for k, v in batch.items()}, task=name).logits
                correct += int((logits.argmax(-1) == labels).sum())
                total += labels.numel()
        accuracies[name] = correct / max(total, 1)
    return accuracies
