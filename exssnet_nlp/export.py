"""Export one task so it serves without this library (any method that can merge its task).

A CLS-pooled task becomes a stock `transformers` `...ForSequenceClassification`. No stock class mean-pools, so a
mean-pooled task becomes a Sentence Transformers model instead: the merged encoder, mean pooling, then the task's
head as two Dense modules; `SentenceTransformer(dir).encode(texts)` returns the task's logits.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel

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
    if model.config.pooling == "mean":  # no stock ...ForSequenceClassification mean-pools
        return export_sentence_transformer(model, task, encoder_state, output_dir, encoder_config)
    dense_path, out_path, activation = EXPORT_HEADS[model.model_type]
    if model.config.pooling != "cls":
        raise ValueError(f"export needs pooling 'cls' or 'mean' (got {model.config.pooling!r}); use the exssnet-nlp "
                         "checkpoint for this model.")
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


def _labelled_config(model: Any, task: str, encoder_config: Any) -> Any:
    info = model.task_info(task)
    cfg = copy.deepcopy(encoder_config if encoder_config is not None else model.encoder.config)
    cfg.id2label = dict(enumerate(info.label_names))
    cfg.label2id = {name: i for i, name in enumerate(info.label_names)}
    return cfg


def _is_sentence_transformer_dir(path: Path) -> bool:
    """Only an earlier Sentence Transformers export may be replaced."""
    return (path / "modules.json").is_file() and (path / "config_sentence_transformers.json").is_file()


def export_sentence_transformer(model: Any, task: str, encoder_state: dict[str, torch.Tensor],
                                output_dir: str | os.PathLike | None = None, encoder_config: Any = None) -> Any:
    """A `SentenceTransformer` for mean-pooled `task`: merged encoder -> mean pooling -> Dense(hidden, activation of
    the task head) -> Dense(num_labels). `encode(texts)` returns the task's logits; `config.json` of the saved
    directory holds the label names (`id2label`)."""
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    except ImportError:
        raise ValueError("exporting a mean-pooled task needs sentence-transformers: `pip install sentence-transformers` "
                         "(or exssnet-nlp[serve]); or train with pooling 'cls' to export a stock ...ForSequenceClassification.") from None
    index = model.task_index(task)
    head = model.heads[str(index)]
    tokenizer = getattr(model, "tokenizer", None) or find_tokenizer(model.base_model_name_or_path)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer to export with the task; set model.tokenizer first.")
    reference_tensor = next(iter(encoder_state.values()))
    stock = AutoModel.from_config(_labelled_config(model, task, encoder_config)).to(reference_tensor.dtype)
    missing, unexpected = stock.load_state_dict(encoder_state, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]  # the encoder's own pooler is never used
    if missing or unexpected:
        raise ValueError(f"the encoder's weights don't fit {type(stock).__name__} (missing {missing[:4]}, unexpected {unexpected[:4]}).")
    max_length = (getattr(model, "serving_info", {}).get(task) or {}).get("max_length")
    with tempfile.TemporaryDirectory(prefix="exssnet-export-") as tmp:
        stock.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=max_length)
    hidden = model.encoder.config.hidden_size
    dense = Dense(hidden, hidden, activation_function=copy.deepcopy(head.activation),
                  init_weight=head.dense.weight.detach().clone(), init_bias=head.dense.bias.detach().clone())
    out = Dense(hidden, head.out.out_features, activation_function=nn.Identity(),
                init_weight=head.out.weight.detach().clone(), init_bias=head.out.bias.detach().clone())
    exported = SentenceTransformer(modules=[transformer, Pooling(hidden, "mean"), dense, out], device=str(reference_tensor.device))
    exported.eval()
    if output_dir is not None:
        atomic_directory(output_dir, lambda tmp: exported.save(str(tmp)), _is_sentence_transformer_dir,
                         "Sentence Transformers model")
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


