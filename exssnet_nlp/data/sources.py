"""Reading a task's raw splits and normalising them: files or the Hub, column checks, labels, per-class sampling."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, IterableDataset

from .specs import LABEL, TASK_REGISTRY, TEXT, TEXT_JOIN, TEXT_PAIR, TaskSpec, _builder_for, is_datasets_object

logger = logging.getLogger(__name__)
TEXT_FORMATS = ("json", "csv")  # read as UTF-8 text by `datasets`; parquet is binary


def _check_utf8(spec: TaskSpec, role: str, path: str) -> None:
    """Name the file, line and byte of the first non-UTF-8 byte (`datasets` raises a bare UnicodeDecodeError)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"task {spec.name!r}: {role}_file {path!r} is not UTF-8: line {number}, byte {err.start + 1} is "
                    f"{line[err.start:err.start + 1]!r}. Save the file as UTF-8 (from Latin-1: "
                    f"`iconv -f latin1 -t utf-8 {path} > fixed{Path(path).suffix}`).") from None


def _load_file(spec: TaskSpec, role: str) -> Dataset | IterableDataset:
    path = getattr(spec, f"{role}_file")
    builder = _builder_for(Path(path))
    kwargs: dict[str, Any] = {"delimiter": "\t"} if Path(path).suffix.lower() == ".tsv" else {}
    if Path(path).stat().st_size == 0:
        raise ValueError(f"task {spec.name!r}: the {role} split is empty ({role}_file {path!r} has no bytes); point it at data with rows")
    if builder in TEXT_FORMATS:
        _check_utf8(spec, role, path)
    try:
        return datasets.load_dataset(builder, data_files=path, split="train", streaming=spec.streaming, **kwargs)
    except Exception as e:  # the builders raise many types; all mean "this file cannot be read as <format>"
        if "corresponds to no data" in str(e):
            raise ValueError(f"task {spec.name!r}: the {role} split is empty ({role}_file {path!r} has no rows); "
                             f"point it at data with rows") from e
        raise ValueError(f"task {spec.name!r}: could not read {role}_file {path!r} as {builder} ({type(e).__name__}: {e}); "
                         f"fix the file or its extension") from e


IN_MEMORY_TEST_SIZE = 0.2


def _in_memory_splits(spec: TaskSpec) -> dict[str, Dataset | IterableDataset]:
    """The splits of a `datasets` object given in the task list: a dict as it is, one Dataset split 80/20 (seeded)."""
    ds = spec.dataset
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return dict(ds)
    if isinstance(ds, IterableDataset):
        raise ValueError(f"task {spec.name!r}: one IterableDataset has no test split; give an IterableDatasetDict with "
                         f"{spec.train_split!r} and {spec.test_split!r} splits")
    parts = ds.train_test_split(test_size=IN_MEMORY_TEST_SIZE, seed=0)
    logger.info("task %s: one Dataset given; %d rows train, %d test (a seeded %g split)", spec.name, len(parts["train"]),
                len(parts["test"]), IN_MEMORY_TEST_SIZE)
    return {spec.train_split: parts["train"], spec.test_split: parts["test"]}


def _load_raw_splits(spec: TaskSpec) -> dict[str, Dataset | IterableDataset]:
    """Load train / test [/ validation] as they are on disk or on the Hub, before any checks."""
    if spec.has_files:
        roles = ["train", "test", *(["validation"] if spec.validation_file is not None else [])]
        return {role: _load_file(spec, role) for role in roles}
    if spec.dataset is None:
        raise ValueError(f"task {spec.name!r} has neither a Hub dataset nor train_file/test_file; give one of them")
    if is_datasets_object(spec.dataset):
        loaded = _in_memory_splits(spec)
    elif not isinstance(spec.dataset, str):
        raise ValueError(f"task {spec.name!r}: `dataset` must be a Hub id or a datasets Dataset/DatasetDict, not "
                         f"{type(spec.dataset).__name__}")
    else:
        try:
            loaded = datasets.load_dataset(spec.dataset, spec.dataset_config, streaming=spec.streaming)
        except (ConnectionError, OSError) as e:
            raise RuntimeError(f"could not load Hub dataset {spec.dataset!r} (config {spec.dataset_config!r}) for task "
                               f"{spec.name!r}: {e}. Without Hub access give train_file/test_file instead.") from e
    wanted = {"train": spec.train_split, "test": spec.test_split}
    where = f"Hub dataset {spec.dataset!r}" if isinstance(spec.dataset, str) else f"the {type(spec.dataset).__name__} given"
    if spec.validation_split is not None:
        wanted["validation"] = spec.validation_split
    raw = {}
    for role, split in wanted.items():
        if split not in loaded:
            raise ValueError(f"task {spec.name!r}: {where} has no split {split!r} (its splits: {sorted(loaded)}); "
                             f"set {role}_split to one of them")
        raw[role] = loaded[split]
    return raw


def _text_columns_in(spec: TaskSpec, columns: Sequence[str]) -> list[str]:
    """The configured text columns, falling back to ``text`` for files that hold the combined text.

    A registry task given with local files inherits the Hub column names (e.g. Yahoo's
    question_title/question_content/best_answer); files in the WebNLP layout already hold the
    joined text in ``text``, so that is used when none of the inherited columns exist. A column
    the caller set explicitly never falls back.
    """
    wanted = spec.text_columns
    registered = TASK_REGISTRY.get(spec.name)
    if (registered is not None and spec.has_files and wanted == registered.text_columns and TEXT in columns
            and not any(c in columns for c in wanted)):
        return [TEXT]
    return wanted


def _label_column_in(spec: TaskSpec, columns: Sequence[str]) -> str:
    registered = TASK_REGISTRY.get(spec.name)
    if (registered is not None and spec.has_files and spec.label_column == registered.label_column and spec.label_column not in columns
            and LABEL in columns):
        return LABEL
    return spec.label_column


@dataclass
class _Columns:
    text: list[str]
    pair: str | None
    label: str


def _check_columns(spec: TaskSpec, split: str, columns: Sequence[str]) -> _Columns:
    cols = _Columns(_text_columns_in(spec, columns), spec.text_pair_column, _label_column_in(spec, columns))
    needed = {"text_column": cols.text, "label_column": [cols.label]}
    if cols.pair is not None:
        needed["text_pair_column"] = [cols.pair]
    for key, names in needed.items():
        missing = [c for c in names if c not in columns]
        if missing:
            raise ValueError(f"task {spec.name!r}, {split} split: column(s) {missing} not found; the data has columns {list(columns)}. "
                             f"Set {key} to the right column.")
    return cols


def _labels_of(spec: TaskSpec, split: str, ds: Dataset, label_col: str) -> np.ndarray:
    """The split's labels as int64, after checking they are integers (no nulls, no strings, no fractions)."""
    feature = ds.features[label_col]
    column = ds.with_format("arrow")[label_col]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    if column.null_count:
        raise ValueError(f"task {spec.name!r}, {split} split: {column.null_count} row(s) have no label in column {label_col!r}; "
                         f"remove them or fill them in")
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
    if pa.types.is_floating(kind):
        values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
        if values.size and not np.all(np.isfinite(values) & (values == np.round(values))):
            bad = values[~(np.isfinite(values) & (values == np.round(values)))][:3].tolist()
            raise ValueError(f"task {spec.name!r}, {split} split: label column {label_col!r} has non-integer values (e.g. {bad}); "
                             f"labels must be integer class ids 0..num_labels-1")
        return values.astype(np.int64)
    values = column.to_pylist()
    if "json" in str(kind):  # pyarrow's JSON type (a column with mixed types) holds each value as JSON text
        values = [json.loads(v) if isinstance(v, str) else v for v in values]
    kinds = {type(v).__name__ for v in values if v is not None}
    if len(kinds) > 1:
        first = {kind: next(v for v in values if type(v).__name__ == kind) for kind in sorted(kinds)}
        raise ValueError(f"task {spec.name!r}, {split} split: label column {label_col!r} mixes {' and '.join(sorted(kinds))} "
                         f"values (e.g. {list(first.values())}); labels must all be integer class ids 0..num_labels-1: map "
                         "the names to ids and list them in label_names")
    example = list(dict.fromkeys(values))[:3]
    hint = " (a ClassLabel feature would be fine)" if not isinstance(feature, ClassLabel) else ""
    raise ValueError(f"task {spec.name!r}, {split} split: label column {label_col!r} holds {kind} values (e.g. {example}), not integers"
                     f"{hint}; map the class names to integer ids 0..num_labels-1 in the file and list the names in label_names")


def _check_label_range(spec: TaskSpec, split: str, labels: np.ndarray, num_labels: int) -> None:
    bad = labels[(labels < 0) | (labels >= num_labels)]
    if bad.size:
        hint = " (GLUE-style hidden test labels are -1: use the validation split as test_split)" if (bad == -1).any() else ""
        examples = sorted(set(bad.tolist()))[:5]
        raise ValueError(f"task {spec.name!r}, {split} split: {bad.size} label(s) outside [0, {num_labels}) (e.g. {examples}){hint}; "
                         f"fix the labels or set num_labels / label_names to cover them")


def _normalise(ds: Dataset | IterableDataset, cols: _Columns) -> Dataset | IterableDataset:
    """Rename / join to exactly ``text`` [, ``text_pair``], ``label`` (int)."""
    keep = list(dict.fromkeys([*cols.text, *([cols.pair] if cols.pair else []), cols.label]))
    ds = ds.select_columns(keep)

    def convert(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if len(cols.text) == 1:
            texts = ["" if t is None else str(t) for t in batch[cols.text[0]]]
        else:
            texts = [TEXT_JOIN.join(str(p).strip() for p in parts if p is not None and str(p).strip())
                     for parts in zip(*(batch[c] for c in cols.text), strict=True)]
        out = {TEXT: texts, LABEL: [int(v) for v in batch[cols.label]]}
        if cols.pair is not None:
            out[TEXT_PAIR] = ["" if t is None else str(t) for t in batch[cols.pair]]
        return out

    target = {TEXT: datasets.Value("string"), LABEL: datasets.Value("int64")}
    if cols.pair is not None:
        target[TEXT_PAIR] = datasets.Value("string")
    order = [TEXT, *([TEXT_PAIR] if cols.pair else []), LABEL]
    features = datasets.Features({k: target[k] for k in order})
    return ds.map(convert, batched=True, remove_columns=keep, features=features)


# ---------------------------------------------------------------------------------------------
# per-class sampling (in-memory)


def _rng(seed: int, split: str, label: int) -> np.random.Generator:
    # Independent stream per (seed, split, class): one class's count never shifts another's sample.
    return np.random.default_rng([seed, {"train": 0, "validation": 1, "test": 2}[split], label])


def _carve_counts(available: int, n_train: int | None, n_val: int | None) -> tuple[int, int]:
    """How many of a class's ``available`` training rows go to train and to validation.

    * ``n_val == 0``: no validation; train takes ``min(n_train, available)`` (all if None).
    * ``n_val is None``: train takes its share, validation all the rest.
    * ``n_train is None``: validation takes ``min(n_val, available // 2)``, train the rest.
    * both ints and enough rows: exactly ``n_train`` and ``n_val``; a short class is split in
      the ratio ``n_train : n_val`` (at least one validation row when the class has two), so
      neither side is left empty.
    """
    if n_val == 0:
        return (available if n_train is None else min(n_train, available)), 0
    if n_val is None:
        train = available if n_train is None else min(n_train, available)
        return train, available - train
    if n_train is None:
        val = min(n_val, available // 2)
        return available - val, val
    if n_train + n_val <= available:
        return n_train, n_val
    val = min(n_val, max(1, (available * n_val) // (n_train + n_val))) if available >= 2 else 0
    return min(n_train, available - val), val


def _sample_train_validation(labels: np.ndarray, num_labels: int, n_train: int | None, n_val: int | None,
                             seed: int) -> tuple[list[int], list[int]]:
    train_idx: list[int] = []
    val_idx: list[int] = []
    for c in range(num_labels):
        rows = np.flatnonzero(labels == c)
        order = rows[_rng(seed, "train", c).permutation(rows.size)]
        k_train, k_val = _carve_counts(rows.size, n_train, n_val)
        if n_train is not None and k_train < n_train:
            logger.info("class %d has %d training rows: %d go to train (asked %d), %d to validation", c, rows.size, k_train, n_train, k_val)
        train_idx.extend(order[:k_train].tolist())
        val_idx.extend(order[k_train:k_train + k_val].tolist())
    return sorted(train_idx), sorted(val_idx)


def _sample_per_class(labels: np.ndarray, num_labels: int, cap: int | None, seed: int, split: str) -> list[int]:
    if cap is None:
        return list(range(labels.size))
    picked: list[int] = []
    for c in range(num_labels):
        rows = np.flatnonzero(labels == c)
        picked.extend(rows[_rng(seed, split, c).permutation(rows.size)[:cap]].tolist())
    return sorted(picked)


def _check_count(name: str, value: int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be {'a non-negative' if allow_zero else 'a positive'} integer or None (all), got {value!r}")
