"""Task specs and the named-task registry: what a task is and where its data lives."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

TEXT = "text"
TEXT_PAIR = "text_pair"
LABEL = "label"

# Separator for tasks whose text is spread over several columns (title + body, ...).
TEXT_JOIN = " "

# Rows a streamed split is shuffled over before the per-class `take`s (seeded, so deterministic).
STREAM_SHUFFLE_BUFFER = 10_000
# Rows of a streamed split whose columns and labels are checked before training starts.
STREAM_CHECK_ROWS = 1_000

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


@dataclass
class TaskSpec:
    """Where a task's data lives and which columns hold text and label.

    Attributes:
        name: Task name (a key of `TASK_REGISTRY` to inherit its columns and labels).
        dataset: Hub dataset id (``"fancyzhx/ag_news"``), a ``datasets`` object (``DatasetDict`` with
            train/test splits, or one ``Dataset`` split 80/20 into train/test), or None for local files.
        dataset_config: Hub config name (``"sst2"`` for GLUE) or None.
        train_file / validation_file / test_file: Local jsonl/json/csv/tsv/parquet paths.
        text_column: Column with the text, or a list of columns joined with one space
            (Yahoo! Answers: title, content, best answer).
        text_pair_column: Second text of a sentence-pair task (GLUE), or None.
        label_column: Column with the 0-based integer label.
        num_labels: Number of classes; None = from ``label_names``, the registry, a Hub
            ``ClassLabel`` or ``max(label) + 1``.
        label_names: Class names in label order (a ``labels.json`` beside the train file
            fills this when unset).
        train_split / validation_split / test_split: Hub split names. With no
            validation split, validation is carved out of train.
        streaming: Stream the data (``IterableDataset``) instead of loading it whole.
    """

    name: str
    dataset: Any = None  # a Hub id (str), or a datasets Dataset / DatasetDict / IterableDatasetDict given in memory
    dataset_config: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str | list[str] = TEXT
    text_pair_column: str | None = None
    label_column: str = LABEL
    num_labels: int | None = None
    label_names: list[str] | None = None
    train_split: str = "train"
    validation_split: str | None = None
    test_split: str = "test"
    streaming: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        """Build a spec from a config mapping; unknown keys raise ValueError naming the allowed ones."""
        if not isinstance(data, dict):
            raise ValueError(f"a task must be a mapping of TaskSpec fields, got {type(data).__name__}: {data!r}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"unknown task key(s) {unknown} in task {data.get('name', '?')!r}; allowed keys: {allowed}")
        if "name" not in data:
            raise ValueError(f"a task needs a 'name' (one of {sorted(TASK_REGISTRY)} or your own with train_file/test_file)")
        data = dict(data)
        if isinstance(data.get("text_column"), (list, tuple)):
            data["text_column"] = [str(c) for c in data["text_column"]]
        if data.get("label_names") is not None:
            data["label_names"] = [str(n) for n in data["label_names"]]
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def text_columns(self) -> list[str]:
        """The text column(s) as a list."""
        return [self.text_column] if isinstance(self.text_column, str) else list(self.text_column)

    @property
    def has_files(self) -> bool:
        return any(p is not None for p in (self.train_file, self.validation_file, self.test_file))


def _hub(name: str, dataset: str, labels: list[str], text: str | list[str] = TEXT, label: str = LABEL, config: str | None = None,
         pair: str | None = None, test_split: str = "test") -> TaskSpec:
    return TaskSpec(name=name, dataset=dataset, dataset_config=config, text_column=text, text_pair_column=pair, label_column=label,
                    num_labels=len(labels), label_names=list(labels), test_split=test_split)


_STARS = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]
_YAHOO = ["Society & Culture", "Science & Mathematics", "Health", "Education & Reference", "Computers & Internet", "Sports",
          "Business & Finance", "Entertainment & Music", "Family & Relationships", "Politics & Government"]
_DBPEDIA = ["Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation", "Building",
            "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork"]
_YAHOO_TEXT = ["question_title", "question_content", "best_answer"]
_GLUE = "nyu-mll/glue"


def _glue(config: str, text: str, labels: list[str], pair: str | None = None, test_split: str = "validation") -> TaskSpec:
    # GLUE's test labels are hidden (-1), so its validation split serves as the test split.
    return _hub(config, _GLUE, labels, text=text, config=config, pair=pair, test_split=test_split)


# Named tasks. The five Zhang et al. (2015) tasks are the WebNLP continual-learning benchmark
# (IDBR / ExSSNeT); ``yahoo_answers`` and ``dbpedia`` are aliases that match the local WebNLP
# folder names. ``amazon_review_full``: Zhang's Amazon Review Full is not on the Hub as a
# maintained dataset, so the registry uses SetFit/amazon_reviews_multi_en (the English part of
# the Multilingual Amazon Reviews Corpus: `text`, 0-based `label` = stars - 1, 5 classes);
# give train_file/test_file to use Zhang's version (e.g. the WebNLP folder) instead.
TASK_REGISTRY: dict[str, TaskSpec] = {
    "ag_news": _hub("ag_news", "fancyzhx/ag_news", ["World", "Sports", "Business", "Sci/Tech"]),
    "yelp_review_full": _hub("yelp_review_full", "Yelp/yelp_review_full", _STARS),
    "amazon_review_full": _hub("amazon_review_full", "SetFit/amazon_reviews_multi_en", _STARS),
    "yahoo_answers_topics": _hub("yahoo_answers_topics", "community-datasets/yahoo_answers_topics", _YAHOO, text=_YAHOO_TEXT,
                                 label="topic"),
    "yahoo_answers": _hub("yahoo_answers", "community-datasets/yahoo_answers_topics", _YAHOO, text=_YAHOO_TEXT, label="topic"),
    "dbpedia_14": _hub("dbpedia_14", "fancyzhx/dbpedia_14", _DBPEDIA, text=["title", "content"]),
    "dbpedia": _hub("dbpedia", "fancyzhx/dbpedia_14", _DBPEDIA, text=["title", "content"]),
    "sst2": _glue("sst2", "sentence", ["negative", "positive"]),
    "cola": _glue("cola", "sentence", ["unacceptable", "acceptable"]),
    "mnli": _glue("mnli", "premise", ["entailment", "neutral", "contradiction"], pair="hypothesis", test_split="validation_matched"),
    "qnli": _glue("qnli", "question", ["entailment", "not_entailment"], pair="sentence"),
    "qqp": _glue("qqp", "question1", ["not_duplicate", "duplicate"], pair="question2"),
    "mrpc": _glue("mrpc", "sentence1", ["not_equivalent", "equivalent"], pair="sentence2"),
    "rte": _glue("rte", "sentence1", ["entailment", "not_entailment"], pair="sentence2"),
}

# What a named task given with local files inherits from the registry (never where the data lives).
_INHERITED_WITH_FILES = ("text_column", "text_pair_column", "label_column", "num_labels", "label_names")
_FILE_FIELDS = ("train_file", "validation_file", "test_file")


def is_datasets_object(value: Any) -> bool:
    """A `datasets` Dataset, IterableDataset, DatasetDict or IterableDatasetDict (data given in memory)."""
    import datasets

    return isinstance(value, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict, datasets.IterableDatasetDict))


def _given_fields(spec: dict[str, Any] | TaskSpec | str) -> dict[str, Any]:
    """The fields the caller set: every key of a dict, the non-default fields of a TaskSpec, a bare name."""
    if isinstance(spec, str):
        return {"name": spec}
    if is_datasets_object(spec):
        raise ValueError(f"a {type(spec).__name__} in the task list needs a name: give it as "
                         "{'name': 'my_task', 'dataset': ds} (with text_column / label_column / label_names as needed)")
    if isinstance(spec, TaskSpec):
        defaults = TaskSpec(name=spec.name)
        return {f.name: getattr(spec, f.name) for f in fields(TaskSpec)
                if f.name == "name" or getattr(spec, f.name) != getattr(defaults, f.name)}
    TaskSpec.from_dict(spec)  # unknown keys / missing name -> ValueError
    return dict(spec)


def _read_labels_json(path: Path) -> list[str]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable JSON list of class names ({e}); fix or remove it, or set label_names") from e
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} must hold a non-empty JSON list of class names in label order; fix it or set label_names")
    return names


def resolve_task_spec(spec: dict[str, Any] | TaskSpec | str, base_dir: str | os.PathLike[str] | None = None) -> TaskSpec:
    """Complete a task spec from the registry and check that its data can be found.

    * A registry name alone (``"ag_news"`` or ``{"name": "ag_news"}``) gets the registry's Hub
      dataset, columns, splits and labels; any field given alongside (e.g. a mirror's
      ``dataset`` id) overrides the registry's.
    * A registry name with local files takes only the column names, label count and label names
      from the registry (unless given), never the Hub id. A ``labels.json`` beside the train file
      (the WebNLP layout) supplies the label names when they are not given explicitly.
    * Any other name needs ``train_file`` and ``test_file`` (or a Hub ``dataset``).

    Relative file paths are resolved against ``base_dir`` (e.g. the config file's folder) when
    given, else the current directory. Raises ValueError for unknown names, missing files and
    inconsistent label counts.
    """
    given = _given_fields(spec)
    name = given["name"]
    registered = TASK_REGISTRY.get(name)
    has_files = any(given.get(k) is not None for k in _FILE_FIELDS)
    if registered is not None and not has_files:
        merged = dataclasses.asdict(registered) | given
    elif registered is not None and has_files:
        merged = {k: getattr(registered, k) for k in _INHERITED_WITH_FILES} | given
        if "label_names" not in given and "num_labels" in given and given["num_labels"] != registered.num_labels:
            merged["label_names"] = None  # the registry's names no longer fit the overridden count
    elif given.get("dataset") is not None or has_files:
        merged = dict(given)
    else:
        raise ValueError(f"unknown task {name!r}: known task names are {sorted(TASK_REGISTRY)}; for another task give "
                         f"'train_file' and 'test_file' (local jsonl/json/csv/parquet) or a Hub 'dataset'")
    resolved = TaskSpec.from_dict(merged)

    if resolved.has_files:
        if resolved.dataset is not None:
            raise ValueError(f"task {name!r} gives both a Hub dataset ({resolved.dataset!r}) and local files; keep one of them")
        if resolved.train_file is None or resolved.test_file is None:
            missing = [k for k in ("train_file", "test_file") if getattr(resolved, k) is None]
            raise ValueError(f"task {name!r} has local files but no {' or '.join(missing)}; every task needs both train_file and test_file")
        for key in _FILE_FIELDS:
            value = getattr(resolved, key)
            if value is None:
                continue
            path = Path(value).expanduser()
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            if not path.is_file():
                raise ValueError(f"task {name!r}: {key} {str(path)!r} does not exist; fix the path (relative paths are resolved "
                                 f"against {str(Path(base_dir)) if base_dir is not None else 'the current directory'})")
            if _builder_for(path) is None:
                raise ValueError(f"task {name!r}: {key} {str(path)!r} has an unsupported extension; use one of {sorted(_FILE_BUILDERS)}")
            setattr(resolved, key, str(path))
        labels_json = Path(resolved.train_file).parent / "labels.json"
        if "label_names" not in given and labels_json.is_file():
            resolved.label_names = _read_labels_json(labels_json)
            if "num_labels" not in given:
                resolved.num_labels = len(resolved.label_names)
    if "label_names" in given and given["label_names"] is not None and "num_labels" not in given:
        resolved.num_labels = len(resolved.label_names)  # given names outrank the registry's count

    if resolved.label_names is not None:
        if resolved.num_labels is None:
            resolved.num_labels = len(resolved.label_names)
        elif resolved.num_labels != len(resolved.label_names):
            raise ValueError(f"task {name!r}: num_labels={resolved.num_labels} but {len(resolved.label_names)} label_names "
                             f"{resolved.label_names}; make them agree")
    if resolved.num_labels is not None and resolved.num_labels < 2:
        raise ValueError(f"task {name!r}: num_labels must be at least 2, got {resolved.num_labels}")
    return resolved


@dataclass
class TaskData:
    """A loaded task: splits with columns ``text`` [, ``text_pair``], ``label``.

    ``validation`` is None when no validation split was asked for. With ``streaming=True``
    the splits are ``IterableDataset`` s (already split across processes).
    """

    spec: TaskSpec
    train: Dataset | IterableDataset
    validation: Dataset | IterableDataset | None
    test: Dataset | IterableDataset
    num_labels: int
    label_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def fingerprint(self) -> str | None:
        """sha256 of the examples a run learns from (train and validation: texts and labels, in order) and the
        label names; None for streamed splits. A resumed run must see the same data."""
        import hashlib

        hasher = hashlib.sha256(json.dumps([self.num_labels, self.label_names]).encode())
        for split in (self.train, self.validation):
            if split is None:
                continue
            if not isinstance(split, Dataset):
                return None
            for column in ("text", "text_pair", "label"):
                if column in split.column_names:
                    hasher.update(json.dumps(list(split[column]), ensure_ascii=False).encode())
        return hasher.hexdigest()

    def splits(self) -> dict[str, Dataset | IterableDataset]:
        """The present splits by name (train, validation if any, test)."""
        out = {"train": self.train}
        if self.validation is not None:
            out["validation"] = self.validation
        out["test"] = self.test
        return out

    def describe(self) -> str:
        """One line per split with its class counts, for logs (streamed splits show no counts)."""
        lines = [f"task {self.name}: {self.num_labels} classes {self.label_names or ''}".rstrip()]
        for split, ds in self.splits().items():
            if isinstance(ds, Dataset):
                lines.append(f"  {split}: {len(ds)} rows, per class {class_counts(ds, self.num_labels)}")
            else:
                lines.append(f"  {split}: streamed")
        return "\n".join(lines)

def _builder_for(path: Path) -> str | None:
    return _FILE_BUILDERS.get(path.suffix.lower())


def class_counts(dataset: Dataset, num_labels: int | None = None, label_column: str = LABEL) -> list[int]:
    """Rows per class of an in-memory split, as a list indexed by label."""
    labels = np.asarray(dataset.with_format("arrow")[label_column].to_numpy(), dtype=np.int64) if len(dataset) else np.zeros(0, np.int64)
    size = max(num_labels or 0, int(labels.max()) + 1 if labels.size else 0)
    return np.bincount(labels, minlength=size).tolist()
