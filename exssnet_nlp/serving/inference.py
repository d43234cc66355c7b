"""Task-id inference: which of a model's tasks does each input belong to?

Two families, compared in benchmarks/task_inference.py (the default is the one that measured best):
- `entropy`: SupSup's criterion. Each finished task classifies the input; the task whose output distribution
  is the most confident wins. Entropy is divided by log(number of labels), so a 14-way head and a 2-way head
  compare on one [0, 1] scale. Costs one forward per task, and the winner's logits are reused.
- `router`, `router_class`, `router_knn`: the encoder's pooled embedding (`model.routing_embedding`, one fixed
  view no later task changes) against a sample of each task's training embeddings, fitted when the task
  finishes and stored in its task file (`router.embeddings`, `router.labels`). Nearest task centroid, nearest
  class centroid, or a KNN vote. Costs one extra forward, then one forward under the chosen task.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

ROUTER_PREFIX = "router."
ROUTER_SAMPLES_PER_CLASS = 32  # training examples per class whose embeddings a task's router keeps
KNN_K = 10
INFERENCE_METHODS = ("router", "router_class", "router_knn", "entropy")
# Chosen by measurement (benchmarks/results/task_inference_*.json, README "Serving").
DEFAULT_INFERENCE = "router_class"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@contextmanager
def eval_mode(model: Any):
    """Eval mode without gradients; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def finished_tasks(model: Any) -> list[str]:
    return [info.name for info in model.task_infos if info.state == "finished"]


def sample_per_class(labels: Sequence[int], per_class: int = ROUTER_SAMPLES_PER_CLASS, seed: int = 0) -> list[int]:
    """Row indices holding up to `per_class` rows of each label, drawn with a fixed seed (the same in every run)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    taken: dict[int, int] = {}
    picked = []
    for i in order:
        label = int(labels[i])
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            picked.append(i)
    return sorted(picked)


def _check_capable(model: Any) -> None:
    if not getattr(model, "supports_task_inference", False):
        raise ValueError(f"method {model.method!r} does not declare task inference (supports_task_inference); "
                         "pass task=... (or --task) to choose the task yourself.")


def fit_router(model: Any, task: str, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Fit finished `task`'s router from batches of its training data (`input_ids`, `attention_mask`, optional
    `labels`): their routing embeddings are kept in `model.routers[task]` and saved in the task's file."""
    _check_capable(model)
    if model.task_info(task).state != "finished":
        raise ValueError(f"task {task!r} is not finished; fit its router after finish_task().")
    embeddings, labels = [], []
    device = _device(model)
    with eval_mode(model):
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
            embeddings.append(model.routing_embedding(**inputs).cpu())
            given = batch.get("labels")
            labels.append(given.cpu().long() if given is not None else torch.zeros(len(embeddings[-1]), dtype=torch.long))
    if not embeddings:
        raise ValueError(f"fit_router for task {task!r} got no examples; pass a sample of its training data.")
    router = {"embeddings": torch.cat(embeddings).contiguous(), "labels": torch.cat(labels).contiguous()}
    model.routers[task] = router
    return router


def prepare_serving(model: Any, task: str, max_length: int, train_set: Any, make_loader: Any, seed: int = 0) -> None:
    """What serving needs of a just-finished task (the trainer calls this): its `max_length` and, when the method
    infers tasks, its router, fitted on `ROUTER_SAMPLES_PER_CLASS` rows per class of its tokenized training set
    (`make_loader(dataset, train=False, seed=0)` batches them)."""
    model.serving_info[task] = {"max_length": int(max_length)}
    if getattr(model, "supports_task_inference", False):
        rows = sample_per_class(train_set["labels"], ROUTER_SAMPLES_PER_CLASS, seed=seed)
        fit_router(model, task, make_loader(train_set.select(rows), train=False, seed=0))


def first_task_embedding(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean-pooled unit vectors of the encoder as the first task sees it (fixed when the method isolates tasks)."""
    first = model.task_infos[0] if model.task_infos else None
    if first is None or first.state != "finished":
        raise ValueError("task routing needs a finished first task; learn (and finish) a task first.")
    hidden = model.encode(input_ids, attention_mask, token_type_ids, task=first.name)
    weights = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).unsqueeze(-1).to(hidden.dtype)
    return F.normalize(((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)).float(), dim=-1)


def _device(model: Any) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _router_tables(model: Any, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every stored routing embedding, with its task's position in `tasks` and its class label."""
    missing = [t for t in tasks if t not in model.routers]
    if missing:
        raise ValueError(f"task(s) {missing} have no router (checkpoints trained before routers, or a model trained by "
                         "hand): fit one with exssnet_nlp.serving.fit_router(model, task, batches), or use inference='entropy'.")
    device = _device(model)
    embeddings = torch.cat([model.routers[t]["embeddings"] for t in tasks]).to(device, torch.float32)
    owners = torch.cat([torch.full((len(model.routers[t]["embeddings"]),), i, dtype=torch.long) for i, t in enumerate(tasks)])
    classes = torch.cat([model.routers[t]["labels"].long() for t in tasks])
    return F.normalize(embeddings, dim=-1), owners.to(device), classes.to(device)


def _router_scores(model: Any, inputs: dict[str, torch.Tensor], tasks: list[str], method: str) -> torch.Tensor:
    """[batch, tasks] similarity of each input to each task (higher is more likely)."""
    table, owners, classes = _router_tables(model, tasks)
    query = model.routing_embedding(**inputs)
    sims = query @ table.T  # cosine: both sides are unit length
    scores = query.new_full((len(query), len(tasks)), float("-inf"))
    if method == "router_knn":
        top = sims.topk(min(KNN_K, sims.shape[1]), dim=1)
        votes = torch.zeros_like(scores).scatter_add_(1, owners[top.indices], torch.ones_like(top.values))
        # Ties go to the task whose neighbours are nearer: a vote is worth 1, the mean similarity < 1.
        near = torch.zeros_like(scores).scatter_add_(1, owners[top.indices], top.values)
        return votes + near / (votes.clamp(min=1) * 2)
    groups = owners * (int(classes.max()) + 1) + classes if method == "router_class" else owners
    for group in groups.unique():
        rows = groups == group
        centroid = F.normalize(table[rows].mean(dim=0), dim=0)
        owner = int(owners[rows][0])
        scores[:, owner] = torch.maximum(scores[:, owner], query @ centroid)
    return scores


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) divided by log(number of labels): 0 is certain, 1 is uniform, for any head size."""
    log_p = logits.float().log_softmax(dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return entropy / math.log(max(logits.shape[-1], 2))


def infer_tasks(model: Any, inputs: dict[str, torch.Tensor], method: str | None = None
                ) -> tuple[list[str], torch.Tensor, dict[str, torch.Tensor]]:
    """(task of each input, a confidence in [0, 1] for it, logits already computed per task).

    Call under `eval_mode(model)`. `method`: one of INFERENCE_METHODS (default: DEFAULT_INFERENCE when every task
    has a router, else `entropy`).
    """
    _check_capable(model)
    tasks = finished_tasks(model)
    if not tasks:
        raise ValueError("the model has no finished task to infer; learn a task first.")
    if method is None:  # the measured best; entropy when some task has no router (e.g. a model trained by hand)
        method = DEFAULT_INFERENCE if all(t in model.routers for t in tasks) else "entropy"
    if method not in INFERENCE_METHODS:
        raise ValueError(f"unknown task inference {method!r}; choose one of {', '.join(INFERENCE_METHODS)}.")
    logits: dict[str, torch.Tensor] = {}
    if method == "entropy":
        for name in tasks:  # one forward per task: heads of different sizes can't share one output
            logits[name] = model(**inputs, task=name).logits.float()
        entropy = torch.stack([normalised_entropy(logits[name]) for name in tasks], dim=1)
        best, index = entropy.min(dim=1)
        confidence = 1.0 - best
    else:
        scores = _router_scores(model, inputs, tasks, method)
        top, index = scores.max(dim=1)
        confidence = top.floor() / KNN_K if method == "router_knn" else top.clamp(min=0.0)
        confidence = confidence.clamp(max=1.0)
    return [tasks[int(i)] for i in index], confidence.cpu(), logits
