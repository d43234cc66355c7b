"""Export one task to a stock `transformers` `...ForSequenceClassification` (any method that can merge its task)."""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from .checkpoint import is_local_dir
from .io import atomic_directory
from .tasks import FINISHED

logger = logging.getLogger(__name__)

# Where a CLS-pooled TaskHead's dense / out layers go in each architecture's
# `...ForSequenceClassification`, and the activation that class hard-codes between them.
EXPORT_HEADS: dict[str, tuple[str, str, str]] = {
    "bert": ("bert.pooler.dense", "classifier", "tanh"),
    "roberta": ("classifier.dense", "classifier.out_proj", "tanh"),
    "xlm-roberta": ("classifier.dense", "classifier.out_proj", "tanh"),
    "camembert": ("classifier.dense", "classifier.out_proj", "tanh"),
    "electra": ("classifier.dense", "classifier.out_proj", "gelu"),
    "distilbert": ("pre_classifier", "classifier", "relu"),
}


# What `save_pretrained` of a model and its tokenizer writes: a directory holding only these may be replaced.
EXPORT_FILE_RE = re.compile(
    r"config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
    r"|pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json|tokenizer\.json|tokenizer_config\.json"
    r"|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)|vocab\.(txt|json)|merges\.txt"
    r"|spiece\.model|sentencepiece\.bpe\.model|tokenizer\.model")


def _is_model_dir(path: Path) -> bool:
    """Only an earlier export (a model and its tokenizer): never replace a directory that merely has a config.json."""
    entries = list(path.iterdir())
    return (path / "config.json").is_file() and all(p.is_file() and EXPORT_FILE_RE.fullmatch(p.name) for p in entries)


def export_sequence_classifier(model: Any, task: str, encoder_state: dict[str, torch.Tensor],
                               output_dir: str | os.PathLike | None = None, encoder_config: Any = None) -> PreTrainedModel:
    """A plain `...ForSequenceClassification` for finished `task`: `encoder_state` (the encoder's tensors as the
    task sees them, under the plain encoder's names) plus the task's head.

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
                         "exssnet-nlp checkpoint (save_pretrained) instead.")
    dense_path, out_path, activation = EXPORT_HEADS[model.model_type]
    if model.config.pooling != "cls":
        raise ValueError(f"export needs pooling='cls' (got {model.config.pooling!r}): no stock transformers "
                         "sequence-classification model mean-pools. Use the exssnet-nlp checkpoint for this model, or "
                         "export the encoder alone and mean-pool yourself.")
    used = model.config.resolved_head_activation(model.model_type)
    if used != activation:
        raise ValueError(f"export to {model.model_type} needs head_activation={activation!r} (its classification "
                         f"head hard-codes it); this model uses {used!r}.")

    cfg = copy.deepcopy(encoder_config if encoder_config is not None else model.encoder.config)
    cfg.id2label = dict(enumerate(info.label_names))
    cfg.label2id = {name: i for i, name in enumerate(info.label_names)}
    cfg.problem_type = "single_label_classification"
    if model.model_type == "distilbert":
        cfg.seq_classif_dropout = model.config.head_dropout
    else:
        cfg.classifier_dropout = model.config.head_dropout
    reference_tensor = next(iter(encoder_state.values()))
    device, dtype = reference_tensor.device, reference_tensor.dtype
    exported = AutoModelForSequenceClassification.from_config(cfg).to(device=device, dtype=dtype)

    state = encoder_state
    with torch.no_grad():
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
        if reference and is_local_dir(reference) and Path(output_dir).expanduser().absolute() == Path(reference).absolute():
            raise ValueError(f"output_dir {output_dir} is the base encoder's own directory; export elsewhere.")
        tokenizer = find_tokenizer(reference)

        def write(tmp: Path) -> None:
            exported.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)

        atomic_directory(output_dir, write, _is_model_dir, "transformers model")
    return exported


def find_tokenizer(*references: str | os.PathLike | None) -> Any:
    from transformers import AutoTokenizer

    for reference in references:
        if not reference:
            continue
        try:
            return AutoTokenizer.from_pretrained(str(reference))
        except Exception as err:  # no tokenizer there (or offline): the caller decides what to do
            logger.info("no tokenizer at %s: %s", reference, err)
    return None


