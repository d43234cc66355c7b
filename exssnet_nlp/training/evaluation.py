"""The one evaluation loop (used by the trainer, `evaluate` and `predict`), and checkpoint inference helpers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from ..checkpoint import read_config, resolve_checkpoint
from ..data import load_task, resolve_task_spec, tokenize_dataset
from ..methods import load_pretrained
from ..tasks import module_device
from .arguments import load_training_config

logger = logging.getLogger(__name__)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def batch_logits(model: Any, batches: Iterable[dict[str, torch.Tensor]], task: str, accelerator: Any = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(logits, labels) per batch of `task`, in eval mode without gradients (gathered over processes with
    `accelerator`). The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    try:
        with torch.no_grad():
            for batch in batches:
                labels = batch.get("labels")
                inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
                if accelerator is not None:
                    with accelerator.autocast():
                        logits = model(**inputs, task=task).logits
                    logits, labels = accelerator.gather_for_metrics((logits, labels))
                else:
                    logits = model(**inputs, task=task).logits
                yield logits, labels
    finally:
        model.train(was_training)


def accuracy(model: Any, batches: Iterable[dict[str, torch.Tensor]], task: str, accelerator: Any = None) -> float:
    """Fraction of examples whose argmax logit is their label."""
    correct = total = 0
    for logits, labels in batch_logits(model, batches, task, accelerator):
        correct += int((logits.argmax(-1).cpu() == labels.cpu()).sum())
        total += labels.numel()
    return correct / max(total, 1)


def load_for_inference(checkpoint: str | os.PathLike, revision: str | None = None,
                       device: str | torch.device | None = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer or None): the tokenizer saved with the checkpoint, else the encoder's own
    (`load_pretrained` finds either: `model.tokenizer`)."""
    model = load_pretrained(resolve_checkpoint(checkpoint, revision), device=device)
    tokenizer = model.tokenizer
    if tokenizer is None:
        logger.warning("No tokenizer found for %s; pass one to predict() yourself.", checkpoint)
    return model, tokenizer


def predict(model: Any, tokenizer: Any, task: str, texts: str | Sequence[str], max_length: int = 128,
            batch_size: int = 32) -> list[dict[str, Any]]:
    """[{"label": name, "score": probability}] for each text under `task`."""
    if tokenizer is None:
        raise ValueError("predict needs a tokenizer; load one with transformers.AutoTokenizer.from_pretrained(...).")
    texts = [texts] if isinstance(texts, str) else list(texts)
    info = model.task_info(task)
    batches = (tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                         return_tensors="pt") for start in range(0, len(texts), batch_size))
    predictions: list[dict[str, Any]] = []
    for logits, _ in batch_logits(model, batches, task):
        scores, labels = logits.float().softmax(dim=-1).max(dim=-1)
        predictions += [{"label": info.label_names[int(i)], "score": float(s)} for s, i in zip(scores, labels, strict=True)]
    return predictions


# What selects a run's test examples and tokenizes them: read from the run when the caller leaves them out.
RUN_SETTINGS = {"max_length": 128, "seed": 0, "eval_samples_per_class": None, "train_samples_per_class": None,
                "validation_samples_per_class": 20}


def evaluate_checkpoint(checkpoint: str | os.PathLike, config_file: str | None = None, tasks: Sequence[str] | None = None,
                        eval_samples_per_class: int | None = None, batch_size: int = 64, max_length: int | None = None,
                        seed: int | None = None) -> dict[str, float]:
    """Test accuracy of each task of a checkpoint, with the task data named in a training config.

    `max_length`, `seed` and the sample caps default to the training run's (stored in the checkpoint), so
    the numbers reproduce the run's last accuracy row; then to the training config's, then to the defaults.
    """
    if config_file is None:
        raise ValueError("evaluate needs the task data: pass --config with the training YAML that lists the tasks.")
    model, tokenizer = load_for_inference(checkpoint)
    if tokenizer is None:
        raise ValueError(f"no tokenizer found for checkpoint {str(checkpoint)!r}; save one beside it (tokenizer.save_pretrained).")
    config_args, specs = load_training_config(config_file, [])
    run_args = ((read_config(resolve_checkpoint(checkpoint)).get("trainer_state") or {}).get("args")) or {}
    given = {"max_length": max_length, "seed": seed, "eval_samples_per_class": eval_samples_per_class}
    settings = {}
    for key, default in RUN_SETTINGS.items():
        if given.get(key) is not None:
            settings[key] = given[key]
        elif key in run_args:
            settings[key] = run_args[key]
        else:
            settings[key] = getattr(config_args, key, default)
    logger.info("evaluating with %s", settings)
    wanted = list(tasks) if tasks else model.tasks
    unknown = sorted(set(wanted) - set(model.tasks))
    if unknown:
        raise ValueError(f"task(s) {unknown} are not in the checkpoint; it holds {model.tasks}.")
    by_name = {resolve_task_spec({"name": s} if isinstance(s, str) else s).name: s for s in specs}
    missing = [t for t in wanted if t not in by_name]
    if missing:
        raise ValueError(f"task(s) {missing} have no data in {config_file!r}; add them to its `tasks` list.")
    accuracies: dict[str, float] = {}
    for name in wanted:
        spec = by_name[name] if not isinstance(by_name[name], str) else {"name": name}
        data = load_task(resolve_task_spec(spec), eval_samples_per_class=settings["eval_samples_per_class"],
                         train_samples_per_class=settings["train_samples_per_class"],
                         validation_samples_per_class=settings["validation_samples_per_class"], seed=settings["seed"])
        info = model.task_info(name)
        if data.num_labels != info.num_labels or (data.label_names and list(data.label_names) != list(info.label_names)):
            raise ValueError(f"task {name!r}: the data in {config_file!r} has {data.num_labels} labels {data.label_names} but "
                             f"the checkpoint's head has {info.num_labels} {info.label_names}; point the task at the data it "
                             "was trained on.")
        loader = DataLoader(tokenize_dataset(data.test, tokenizer, settings["max_length"]), batch_size=batch_size,
                            collate_fn=DataCollatorWithPadding(tokenizer))
        accuracies[name] = accuracy(model, loader, name)
    return accuracies
