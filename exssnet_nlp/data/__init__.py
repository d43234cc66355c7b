"""Task data: specs and the named-task registry (`specs`), reading and sampling splits (`sources`, `loading`,
`streaming`), and tokenisation (`tokenize`).

A task is described by a `TaskSpec`: a Hugging Face Hub dataset or local files (jsonl, json, csv, tsv, parquet);
named tasks from `TASK_REGISTRY` need only their name. `load_task` turns a spec into a `TaskData` whose splits hold
exactly the columns `text` [, `text_pair`], `label`, sampled per class; every problem that would otherwise surface
in the middle of training raises `ValueError` here, naming the problem and the fix.
"""

from .loading import load_task
from .specs import LABEL, STREAM_SHUFFLE_BUFFER, TASK_REGISTRY, TEXT, TEXT_PAIR, TaskData, TaskSpec, class_counts, resolve_task_spec
from .streaming import materialize
from .tokenize import tokenize_dataset, tokenize_task

__all__ = [
    "LABEL",
    "STREAM_SHUFFLE_BUFFER",
    "TASK_REGISTRY",
    "TEXT",
    "TEXT_PAIR",
    "TaskData",
    "TaskSpec",
    "class_counts",
    "load_task",
    "materialize",
    "resolve_task_spec",
    "tokenize_dataset",
    "tokenize_task",
]
