"""Streamed splits (`streaming: true`): per-class caps taken from the stream, split across processes."""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node

from .sources import _check_columns, _check_label_range, _Columns, _load_raw_splits, _normalise
from .specs import LABEL, STREAM_CHECK_ROWS, STREAM_SHUFFLE_BUFFER, TaskData, TaskSpec

logger = logging.getLogger(__name__)

def _check_stream(spec: TaskSpec, split: str, ds: IterableDataset, num_labels: int) -> _Columns:
    """Check columns and the first `STREAM_CHECK_ROWS` labels of a stream before training starts."""
    head = list(ds.take(STREAM_CHECK_ROWS))
    if not head:
        raise ValueError(f"task {spec.name!r}: the {split} split is empty; point {split}_file / {split}_split at data with rows")
    cols = _check_columns(spec, split, list(head[0].keys()))
    values = [row[cols.label] for row in head]
    if any(v is None or isinstance(v, (str, bool)) or (isinstance(v, float) and not v.is_integer()) for v in values):
        bad = [v for v in values if v is None or isinstance(v, (str, bool)) or (isinstance(v, float) and not v.is_integer())][:3]
        raise ValueError(f"task {spec.name!r}, {split} split: label column {cols.label!r} has non-integer values (e.g. {bad}); "
                         f"labels must be integer class ids 0..num_labels-1")
    _check_label_range(spec, split, np.asarray(values, dtype=np.int64), num_labels)
    return cols


def _range_guard(spec: TaskSpec, split: str, num_labels: int):
    def guard(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        # Rows past the checked head are verified as they stream by.
        _check_label_range(spec, split, np.asarray(batch[LABEL], dtype=np.int64), num_labels)
        return batch
    return guard


def _one_shard(ds: IterableDataset) -> IterableDataset:
    # A single shard makes split_dataset_by_node hand out rows round-robin (every world_size-th
    # row) instead of whole shards, so each rank keeps the per-class balance.
    def rows(source: IterableDataset):
        yield from source
    return IterableDataset.from_generator(rows, gen_kwargs={"source": ds}, features=ds.features)


def _per_class_stream(ds: IterableDataset, num_labels: int, counts: list[tuple[int, int | None]]) -> IterableDataset:
    """Interleave, per class, ``skip(start).take(count)`` of that class's rows.

    Each class filters the (shuffled) stream on its own, reading until it has its count, so a
    rare class may read far into the stream.
    """
    parts = []
    for c in range(num_labels):
        rows = ds.filter(lambda ex, c=c: ex[LABEL] == c)
        start, count = counts[c]
        if start:
            rows = rows.skip(start)
        if count is not None:
            rows = rows.take(count)
        parts.append(rows)
    return datasets.interleave_datasets(parts, stopping_strategy="all_exhausted_without_replacement")


def _load_streaming(spec: TaskSpec, n_train: int | None, n_eval: int | None, n_val: int | None, seed: int, rank: int,
                    world_size: int) -> TaskData:
    if spec.num_labels is None:
        raise ValueError(f"task {spec.name!r} is streamed, so its classes cannot be counted up front; set num_labels or label_names")
    num_labels = spec.num_labels
    raw = _load_raw_splits(spec)
    prepared: dict[str, IterableDataset] = {}
    for split, ds in raw.items():
        cols = _check_stream(spec, split, ds, num_labels)
        prepared[split] = _normalise(ds, cols).map(_range_guard(spec, split, num_labels), batched=True)

    train_src = prepared["train"].shuffle(seed=seed, buffer_size=STREAM_SHUFFLE_BUFFER)
    if "validation" in prepared:
        train = _per_class_stream(train_src, num_labels, [(0, n_train)] * num_labels)
        cap = n_val or None
        validation = _per_class_stream(prepared["validation"], num_labels, [(0, cap)] * num_labels)
    elif n_val == 0:
        train, validation = _per_class_stream(train_src, num_labels, [(0, n_train)] * num_labels), None
    elif n_train is not None:
        # Train takes the first n_train rows of each class, validation the next n_val (disjoint).
        train = _per_class_stream(train_src, num_labels, [(0, n_train)] * num_labels)
        validation = _per_class_stream(train_src, num_labels, [(n_train, n_val)] * num_labels)
    elif n_val is not None:
        validation = _per_class_stream(train_src, num_labels, [(0, n_val)] * num_labels)
        train = _per_class_stream(train_src, num_labels, [(n_val, None)] * num_labels)
    else:
        raise ValueError("with streaming, validation_samples_per_class=None needs a train_samples_per_class "
                         "(a stream has no 'rest' to carve from otherwise)")
    test = _per_class_stream(prepared["test"], num_labels, [(0, n_eval)] * num_labels) if n_eval is not None else prepared["test"]

    def place(ds: IterableDataset) -> IterableDataset:
        ds = _one_shard(ds)
        return split_dataset_by_node(ds, rank=rank, world_size=world_size) if world_size > 1 else ds

    return TaskData(spec=spec, train=place(train), validation=None if validation is None else place(validation), test=place(test),
                    num_labels=num_labels, label_names=spec.label_names, extra={"rank": rank, "world_size": world_size})


# ---------------------------------------------------------------------------------------------
# tokenisation


def materialize(data: TaskData) -> TaskData:
    """A streamed task's per-class samples read into memory (what training by epochs needs: a length).

    Only for splits bounded by per-class caps: the trainer asks for `train_samples_per_class` and caps the
    test split, so a stream of any size is read only as far as those samples need.
    """
    splits = {}
    for name in ("train", "validation", "test"):
        split = getattr(data, name)
        splits[name] = None if split is None else Dataset.from_list(list(split), features=split.features)
    return TaskData(spec=data.spec, train=splits["train"], validation=splits["validation"], test=splits["test"],
                    num_labels=data.num_labels, label_names=data.label_names, extra={**data.extra, "materialized": True})
