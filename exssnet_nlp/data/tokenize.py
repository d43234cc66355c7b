"""Tokenisation of a task's splits into model inputs."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from datasets import Dataset, IterableDataset

from .specs import LABEL, TEXT, TEXT_PAIR, TaskData

logger = logging.getLogger(__name__)

def tokenize_dataset(dataset: Dataset | IterableDataset, tokenizer: Any, max_length: int, text_column: str = TEXT,
                     text_pair_column: str | None = None, label_column: str = LABEL) -> Dataset | IterableDataset:
    """Tokenise a split into ``input_ids``, ``attention_mask`` [, ``token_type_ids``], ``labels``.

    Rows are truncated to ``max_length`` and left unpadded: a `DataCollatorWithPadding` pads each
    batch to its own longest row, which is much cheaper than padding everything to max_length.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if text_pair_column is None and TEXT_PAIR in (dataset.column_names or []):
        text_pair_column = TEXT_PAIR

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        if text_pair_column is None:
            enc = tokenizer(batch[text_column], truncation=True, max_length=max_length)
        else:
            enc = tokenizer(batch[text_column], batch[text_pair_column], truncation=True, max_length=max_length)
        out = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out["labels"] = batch[label_column]
        return out

    remove = dataset.column_names or [c for c in (text_column, text_pair_column, label_column) if c]
    if isinstance(dataset, IterableDataset):
        return dataset.map(encode, batched=True, remove_columns=remove)
    # An explicit fingerprint: otherwise `datasets` dill-hashes the whole tokenizer on every call (seconds each).
    key = f"{dataset._fingerprint}|{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}|{max_length}|{text_column}|{text_pair_column}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    return dataset.map(encode, batched=True, remove_columns=remove, new_fingerprint=fingerprint, desc="tokenize")


def tokenize_task(task_data: TaskData, tokenizer: Any, max_length: int) -> dict[str, Dataset | IterableDataset]:
    """Tokenise every split of a task (keys ``train``, ``validation`` if present, ``test``)."""
    return {split: tokenize_dataset(ds, tokenizer, max_length) for split, ds in task_data.splits().items()}
