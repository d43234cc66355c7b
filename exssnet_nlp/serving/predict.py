"""`predict`: raw texts in, label names and scores out, for one task or with the task inferred per text."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch

from .inference import MODEL_INPUTS, _device, eval_mode, finished_tasks, infer_tasks

DEFAULT_MAX_LENGTH = 128  # for tasks whose training length is unknown (checkpoints older than serving info)
AUTO = "auto"


def task_max_length(model: Any, task: str) -> int:
    """The `max_length` `task` was trained with (stored in the checkpoint), else DEFAULT_MAX_LENGTH."""
    return int((model.serving_info.get(task) or {}).get("max_length") or DEFAULT_MAX_LENGTH)


def read_texts(lines: Iterable[str]) -> list[str]:
    """Texts from a file or stdin: one per line, or JSON lines with a "text" field (blank lines are skipped)."""
    texts = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number} starts with '{{' but is not valid JSON ({err}); write one JSON object "
                                 'per line ({"text": "..."}) or plain text that does not start with "{".') from None
            if not isinstance(row.get("text"), str):
                raise ValueError(f'line {number}: a JSON line needs a "text" string field; got keys {sorted(row)}.')
            texts.append(row["text"])
        else:
            texts.append(line)
    return texts


def _check_texts(texts: str | Iterable[str]) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"predict takes strings; item(s) {bad[:5]} are not (e.g. {type(texts[bad[0]]).__name__}).")
    if not texts:
        raise ValueError("predict got no texts; pass a list of strings.")
    return texts


def _row(info: Any, probs: torch.Tensor) -> dict[str, Any]:
    score, label = probs.max(dim=-1)
    names = info.label_names
    return {"task": info.name, "label": names[int(label)] if int(label) < len(names) else str(int(label)),
            "score": float(score)}


def predict(model: Any, texts: str | Iterable[str], task: str | None = None, tokenizer: Any = None,
            batch_size: int = 32, max_length: int | None = None, inference: str | None = None) -> list[dict[str, Any]]:
    """[{"task", "label", "score"}] for each text: the label name and its probability under `task`.

    `task=None` or `"auto"`: each text's task is inferred first (`inference`, see INFERENCE_METHODS) and the
    row also holds `task_score`, the confidence of that choice. `tokenizer` defaults to the model's own (saved
    with the checkpoint), `max_length` to the one the task was trained with (the longest, when inferring).
    """
    texts = _check_texts(texts)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("no tokenizer: this model was built without one and its checkpoint holds none. Pass "
                         "tokenizer=AutoTokenizer.from_pretrained(<the encoder>), or set model.tokenizer and save again.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    auto = task is None or task == AUTO
    tasks = finished_tasks(model)
    if not tasks:
        raise ValueError("the model has no finished task to predict with; learn (and finish) a task first.")
    if not auto and task not in tasks:
        raise ValueError(f"task {task!r} is not a finished task of this model; its tasks: {', '.join(tasks)} "
                         "(or task=None to infer each text's task).")
    if max_length is None:
        max_length = max(task_max_length(model, t) for t in (tasks if auto else [task]))
    device = _device(model)
    rows: list[dict[str, Any]] = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt")
            inputs = {k: v.to(device) for k, v in encoded.items() if k in MODEL_INPUTS}
            if not auto:
                probs = model(**inputs, task=task).logits.float().softmax(dim=-1).cpu()
                rows += [_row(model.task_info(task), p) for p in probs]
                continue
            chosen, confidence, computed = infer_tasks(model, inputs, inference)
            batch_rows: list[dict[str, Any]] = [{} for _ in chosen]
            for name in dict.fromkeys(chosen):  # one forward per chosen task, over its rows only
                picked = [i for i, t in enumerate(chosen) if t == name]
                if name in computed:
                    logits = computed[name][picked]
                else:
                    index = torch.tensor(picked, device=device)
                    logits = model(**{k: v[index] for k, v in inputs.items()}, task=name).logits
                for i, p in zip(picked, logits.float().softmax(dim=-1).cpu(), strict=True):
                    batch_rows[i] = {**_row(model.task_info(name), p), "task_score": float(confidence[i])}
            rows += batch_rows
    return rows
