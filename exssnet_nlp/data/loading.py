"""Task specs, the named-task registry, loading, per-class sampling and tokenisation.

A task is described by a `TaskSpec`: either a Hugging Face Hub dataset (``dataset`` and
``dataset_config``) or local files (``train_file``/``test_file``, optionally
``validation_file``; jsonl, json, csv, tsv or parquet). Named tasks from `TASK_REGISTRY`
(``ag_news``, ``yelp_review_full``, ..., the GLUE tasks) need only their name.

`load_task` turns a spec into a `TaskData` whose splits hold exactly the columns
``text`` [, ``text_pair``], ``label`` (0-based int), sampled per class as in IDBR / ExSSNeT:
N training examples per class, a validation split carved out of the remaining training
rows (stratified, seeded, disjoint from the training sample) and the test split capped per
class. Every problem that would otherwise surface in the middle of training (a missing
file, an unknown task, a missing column, labels out of range, an empty split, non-integer
labels) raises `ValueError` here, naming the problem and the fix.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from datasets import ClassLabel

from .sources import (
    _check_columns,
    _check_count,
    _check_label_range,
    _labels_of,
    _load_raw_splits,
    _normalise,
    _sample_per_class,
    _sample_train_validation,
)
from .specs import TaskData, TaskSpec, resolve_task_spec
from .streaming import _load_streaming

logger = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------
# loading



def _check_classes_present(spec: TaskSpec, labels: dict[str, np.ndarray], num_labels: int,
                           label_names: list[str] | None) -> None:
    """Every class must have training rows (else its head row is trained on nothing: a typo label, a class only in
    test, or num_labels larger than the data); a class missing from validation or test is only warned about."""
    names = label_names or [str(i) for i in range(num_labels)]
    counts = {split: np.bincount(lab, minlength=num_labels) for split, lab in labels.items()}
    for split, count in counts.items():
        empty = [int(c) for c in np.flatnonzero(count == 0)]
        if not empty:
            continue
        described = ", ".join(f"class {c} ({names[c]!r})" for c in empty[:5])
        table = "; ".join(f"{s}: {dict(enumerate(n.tolist()))}" for s, n in counts.items())
        if split == "train":
            raise ValueError(f"task {spec.name!r}: {described} has no rows in the train split (rows per class: {table}). "
                             "A class no training row has would train an empty head row: fix the labels (a typo? a class only "
                             "in test?) or set num_labels / label_names to the classes the data has.")
        logger.warning("task %s: %s has no rows in the %s split (rows per class: %s); its accuracy ignores that class.",
                       spec.name, described, split, table)


def load_task(spec: dict[str, Any] | TaskSpec | str, train_samples_per_class: int | None = None, eval_samples_per_class: int | None = None,
              validation_samples_per_class: int | None = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
              base_dir: str | os.PathLike[str] | None = None) -> TaskData:
    """Load a task, check it and sample it per class.

    Args:
        spec: A `TaskSpec`, its dict form or a registry name (see `resolve_task_spec`).
        train_samples_per_class: Training rows kept per class (None = all).
        eval_samples_per_class: Test rows kept per class (None = all), stratified and seeded.
        validation_samples_per_class: Validation rows per class. With a validation split/file in
            the spec it caps that split (0 or None = all of it). Otherwise validation is carved out
            of the training rows not sampled for train (disjoint, stratified, seeded; see
            `_carve_counts` for short classes): 0 = no validation split (``TaskData.validation``
            is None), None = every training row not used for train.
        seed: Sampling seed; the same seed gives the same rows.
        rank / world_size: With ``streaming=True`` every split is divided across processes with
            `datasets.distributed.split_dataset_by_node` (rank r gets every world_size-th row of
            the per-class sample, so the ranks' rows partition the single-process sample).
            In-memory splits are left whole: the DataLoader / Accelerate shards those.
        base_dir: Folder that relative file paths in the spec are relative to.

    Raises:
        ValueError: unknown task, missing file or column, labels that are not integers or lie
            outside [0, num_labels), an empty split.
    """
    _check_count("train_samples_per_class", train_samples_per_class)
    _check_count("eval_samples_per_class", eval_samples_per_class)
    _check_count("validation_samples_per_class", validation_samples_per_class, allow_zero=True)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    resolved = resolve_task_spec(spec, base_dir=base_dir)
    if resolved.streaming:
        return _load_streaming(resolved, train_samples_per_class, eval_samples_per_class, validation_samples_per_class, seed, rank,
                               world_size)

    raw = _load_raw_splits(resolved)
    cols = {split: _check_columns(resolved, split, ds.column_names) for split, ds in raw.items()}
    for split, ds in raw.items():
        if len(ds) == 0:
            raise ValueError(f"task {resolved.name!r}: the {split} split is empty; point {split}_file / {split}_split at data with rows")
    labels = {split: _labels_of(resolved, split, ds, cols[split].label) for split, ds in raw.items()}

    label_names = resolved.label_names
    train_feature = raw["train"].features.get(cols["train"].label)
    if label_names is None and isinstance(train_feature, ClassLabel):
        label_names = list(train_feature.names)  # a Hub ClassLabel knows its class names
    num_labels = resolved.num_labels or (len(label_names) if label_names else None)
    if num_labels is None:
        num_labels = int(max(int(lab.max()) for lab in labels.values())) + 1
        if num_labels < 2:
            raise ValueError(f"task {resolved.name!r}: all labels are 0, so there is only one class; check label_column")
        logger.info("task %s: num_labels inferred as %d from the data", resolved.name, num_labels)
    for split, lab in labels.items():
        _check_label_range(resolved, split, lab, num_labels)
    _check_classes_present(resolved, labels, num_labels, label_names)

    if "validation" in raw:
        cap = validation_samples_per_class or None
        train_idx = _sample_per_class(labels["train"], num_labels, train_samples_per_class, seed, "train")
        val_idx = _sample_per_class(labels["validation"], num_labels, cap, seed, "validation")
        validation = raw["validation"].select(val_idx)
        val_cols = cols["validation"]
    else:
        train_idx, val_idx = _sample_train_validation(labels["train"], num_labels, train_samples_per_class,
                                                      validation_samples_per_class, seed)
        validation = raw["train"].select(val_idx) if validation_samples_per_class != 0 else None
        val_cols = cols["train"]
    test_idx = _sample_per_class(labels["test"], num_labels, eval_samples_per_class, seed, "test")

    train = _normalise(raw["train"].select(train_idx), cols["train"])
    test = _normalise(raw["test"].select(test_idx), cols["test"])
    if validation is not None:
        if len(validation) == 0:
            raise ValueError(f"task {resolved.name!r}: the validation split came out empty (every training row went to train); "
                             f"lower train_samples_per_class or set validation_samples_per_class=0")
        validation = _normalise(validation, val_cols)
    if len(train) == 0:
        raise ValueError(f"task {resolved.name!r}: the train split came out empty; lower validation_samples_per_class")
    data = TaskData(spec=resolved, train=train, validation=validation, test=test, num_labels=num_labels, label_names=label_names)
    logger.info("%s", data.describe())
    return data


# ---------------------------------------------------------------------------------------------
# streaming
