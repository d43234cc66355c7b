"""KNN knowledge transfer (KKT): start a new task's mask from the most similar earlier task's mask.

Between `model.add_task(...)` and `model.begin_mask_phase()`:

1. take a small seeded, stratified sample of the new task's training data;
2. for every finished task j, embed the sample under j's mask (pooled last hidden state) and score a
   k-nearest-neighbour classifier of the *new* labels on a seeded held-out split: how well j's
   subnetwork already separates the new task's classes;
3. choose the source(s) that beat chance by a margin (`KKTConfig.mode`);
4. set the new task's scores so that its initial mask is the source's mask (`best`) or a weighted
   vote of the sources' masks (`all`). Only the new task's scores change; finished tasks never do.

Distances: embeddings are L2-normalised and compared with the Euclidean metric. On unit vectors
||a - b||^2 = 2 - 2 cos(a, b), so the neighbours are exactly the cosine neighbours, while sklearn can
still use its fast Euclidean search.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from tqdm.auto import tqdm

from ..tasks import CREATED, module_device, pool
from .config import AUTO_MARGIN_STD_ERRORS, MIN_SCORABLE, KKTConfig, KKTResult, _is_int

logger = logging.getLogger(__name__)

_MODEL_STATES_FOR_TRANSFER = (CREATED, "mask")  # before the weight phase


def _labels_array(labels: torch.Tensor | Sequence[int] | np.ndarray) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one class index per example (1-D), got shape {tuple(array.shape)}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices for KKT, got dtype {array.dtype}.")
    return array.astype(np.int64, copy=False)


def select_sample(num_examples: int, labels: torch.Tensor | Sequence[int] | np.ndarray | None, config: KKTConfig) -> torch.Tensor:
    """Sorted indices of the examples KKT embeds: `config.sample_size(num_examples)` of them, seeded.

    With labels, the sample is stratified: each class gets its proportional share (largest-remainder
    rounding, remainders tied in a seeded random order), so a rare class is neither lost nor inflated.
    """
    if not _is_int(num_examples) or num_examples < 0:
        raise ValueError(f"num_examples must be an int >= 0, got {num_examples!r}.")
    size = config.sample_size(num_examples)
    generator = torch.Generator().manual_seed(config.seed)
    if size >= num_examples:
        return torch.arange(num_examples, dtype=torch.long)
    if labels is None:
        return torch.randperm(num_examples, generator=generator)[:size].sort().values
    array = _labels_array(labels)
    if array.shape[0] != num_examples:
        raise ValueError(f"labels has {array.shape[0]} entries for {num_examples} examples.")
    classes, counts = np.unique(array, return_counts=True)
    quotas = size * counts / num_examples
    shares = np.floor(quotas).astype(np.int64)
    # Hand the rounding leftovers to the largest remainders; a seeded random order breaks equal remainders.
    jitter = torch.rand(len(classes), generator=generator).numpy()
    order = np.lexsort((jitter, -(quotas - shares)))
    shares[order[: size - int(shares.sum())]] += 1
    chosen = []
    for cls, share in zip(classes, shares, strict=True):
        members = torch.from_numpy(np.flatnonzero(array == cls))
        chosen.append(members[torch.randperm(len(members), generator=generator)[: int(share)]])
    return torch.cat(chosen).sort().values


def _holdout_split(labels: np.ndarray, config: KKTConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (fit, held-out) positions; stratified when every class has >= 2 examples and both parts can hold each class."""
    n = labels.shape[0]
    n_test = min(n - 1, max(1, round(config.test_size * n)))
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if (counts.min() >= 2 and n_test >= len(counts) and n - n_test >= len(counts)) else None
    fit, test = train_test_split(np.arange(n), test_size=n_test, stratify=stratify, random_state=config.seed)
    return np.sort(fit), np.sort(test)


# --- scoring --------------------------------------------------------------------------------------
def _encoder_device(model: Any) -> torch.device:
    return module_device(model.encoder)


def _embed(model: Any, encodings: Mapping[str, torch.Tensor], task: str, config: KKTConfig) -> np.ndarray:
    """L2-normalised pooled embeddings of every example under `task`'s mask (caller handles modes)."""
    device = _encoder_device(model)
    input_ids = encodings["input_ids"]
    attention_mask = encodings.get("attention_mask")
    token_type_ids = encodings.get("token_type_ids")
    parts = []
    for start in range(0, input_ids.shape[0], config.batch_size):
        rows = slice(start, start + config.batch_size)
        ids = input_ids[rows].to(device)
        mask = None if attention_mask is None else attention_mask[rows].to(device)
        types = None if token_type_ids is None else token_type_ids[rows].to(device)
        hidden = model.encode(ids, mask, types, task=task)
        vectors = torch.nn.functional.normalize(pool(hidden, mask, config.pooling).float(), dim=-1)
        parts.append(vectors.cpu())
    return torch.cat(parts).numpy()


_ENCODING_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _num_rows(encodings: Mapping[str, Any]) -> int:
    if "input_ids" not in encodings:
        raise ValueError(f"encodings must contain 'input_ids' (and usually 'attention_mask'); got keys {sorted(encodings)}.")
    n = len(encodings["input_ids"])
    for key in _ENCODING_KEYS:
        if key in encodings and len(encodings[key]) != n:
            raise ValueError(f"encodings[{key!r}] has {len(encodings[key])} rows; input_ids has {n}.")
    return n


def _pad_rows(rows: list[Any], value: int) -> torch.Tensor:
    """Right-pad token rows of different lengths into one tensor."""
    rows = [torch.as_tensor(row) for row in rows]
    width = max((len(row) for row in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype if rows else torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _take(encodings: Mapping[str, Any], indices: torch.Tensor | None = None, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Rows `indices` (default: all) of each encoding as tensors. Only those rows are converted, so
    `encodings` may be whole unpadded columns (lists, or a `datasets` column): ragged rows are
    right-padded (input_ids with `pad_token_id`, the others with 0) and get an attention mask."""
    n = _num_rows(encodings)
    rows = range(n) if indices is None else indices.tolist()
    taken: dict[str, torch.Tensor] = {}
    ragged = False
    for key in _ENCODING_KEYS:
        if key not in encodings:
            continue
        value = encodings[key]
        if isinstance(value, torch.Tensor):
            taken[key] = value if indices is None else value[indices.to(value.device)]
        elif isinstance(value, np.ndarray) and value.dtype != object:
            taken[key] = torch.as_tensor(value if indices is None else value[indices.numpy()])
        else:
            picked = [value[i] for i in rows]
            lengths = {len(row) for row in picked}
            ragged = ragged or len(lengths) > 1
            taken[key] = _pad_rows(picked, pad_token_id if key == "input_ids" else 0)
    if ragged and "attention_mask" not in encodings:
        lengths = [len(encodings["input_ids"][i]) for i in rows]
        taken["attention_mask"] = _pad_rows([[1] * length for length in lengths], 0)
    return taken


def _pad_id(model: Any) -> int:
    pad = getattr(model.encoder.config, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def knn_scores(model: Any, encodings: Mapping[str, Any], labels: torch.Tensor | Sequence[int] | np.ndarray,
               config: KKTConfig | None = None, tasks: Sequence[str] | None = None) -> dict[str, float]:
    """Held-out KNN accuracy of `labels` on embeddings of `encodings` under each finished task's mask.

    Every row of `encodings` (input_ids, attention_mask[, token_type_ids]; tensors, or lists that
    are padded here) is embedded: sample them first (`select_sample`). Every task is scored on the
    same seeded split, so the accuracies compare. The model's train/eval mode, current task and the
    current task are restored afterwards.
    """
    config = config or KKTConfig()
    tensors = _take(encodings, pad_token_id=_pad_id(model))
    array = _labels_array(labels)
    if array.shape[0] != tensors["input_ids"].shape[0]:
        raise ValueError(f"labels has {array.shape[0]} entries; encodings have {tensors['input_ids'].shape[0]} rows.")
    if array.shape[0] < MIN_SCORABLE:
        raise ValueError(f"KKT needs at least {MIN_SCORABLE} examples to score a held-out KNN, got {array.shape[0]}.")
    finished = model.finished_tasks
    tasks = finished if tasks is None else list(tasks)
    not_finished = [t for t in tasks if t not in finished]
    if not_finished:
        raise ValueError(f"KKT scores finished tasks only; {not_finished} are not finished (finished: {finished}).")
    fit, test = _holdout_split(array, config)
    k = config.resolved_k(len(fit))

    was_training = model.training
    current = model.current_task
    scores: dict[str, float] = {}
    model.eval()  # no dropout: the embeddings are the mask's, not noise's
    try:
        with torch.no_grad():
            for task in tqdm(tasks, desc="KKT", unit="task", leave=False, disable=None if len(tasks) > 1 else True):
                embeddings = _embed(model, tensors, task, config)
                knn = KNeighborsClassifier(n_neighbors=k, metric="euclidean")
                knn.fit(embeddings[fit], array[fit])
                scores[task] = float(knn.score(embeddings[test], array[test]))
    finally:
        model.train(was_training)
        if current is not None and model.current_task != current:
            model.set_task(current)
    return scores


# --- transfer -------------------------------------------------------------------------------------
def vote_topk(votes: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Bool mask of the k largest votes; equal votes are ordered by a seeded random permutation (never reorders unequal votes)."""
    flat = votes.flatten()
    perm = torch.randperm(flat.numel(), generator=generator).to(flat.device)
    order = torch.sort(flat[perm], descending=True, stable=True).indices
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[perm[order[:k]]] = True
    return mask.view_as(votes)


def apply_transfer(model: Any, sources: Sequence[str], weights: Sequence[float] | None = None,
                   generator: torch.Generator | None = None) -> None:
    """Set the learning task's scores so that its initial mask comes from the finished `sources`.

    One source: the initial mask *is* that source's mask. Several: each weight's vote is
    sum_j weights[j] * mask_j (default weights all 1), and the initial mask is the top-k by vote
    (k = the layer's mask size), equal votes broken in a seeded random order. It therefore keeps
    exactly k weights, all from the union of the sources' masks (each source's mask alone holds k),
    weights most sources agree on first. (With two sources of unequal weight this is the heavier
    source's mask: its weights outvote the lighter one's everywhere they differ.)

    Masks of finished tasks are read from their packed bits; only the learning task's scores change,
    via `SupermaskLinear.set_scores_from_mask` (kept weights lifted just above the fresh k-th |score|, the rest just below).
    With `task_norms`, the new task's norms start as a copy of the heaviest source's (first on ties).
    `generator` (CPU) seeds the tie-breaks of the `all` vote; default: seeded from the model's config.
    """
    name = model.learning_task
    if name is None:
        raise ValueError("apply_transfer needs a task being learned: call model.add_task(name, num_labels) first.")
    state = model.task_info(name).state
    if state not in _MODEL_STATES_FOR_TRANSFER:
        raise ValueError(f"apply_transfer must run before the weight phase (after add_task, before training); "
                         f"task {name!r} is in state {state!r}.")
    sources = list(sources)
    if not sources:
        raise ValueError("apply_transfer needs at least one source task.")
    finished = model.finished_tasks
    bad = [s for s in sources if s not in finished]
    if bad or len(set(sources)) != len(sources):
        raise ValueError(f"sources must be distinct finished tasks; got {sources} (finished: {finished}).")
    if weights is None:
        weights = [1.0] * len(sources)
    weights = [float(w) for w in weights]
    if len(weights) != len(sources) or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"weights must be {len(sources)} positive finite numbers, one per source; got {weights}.")
    if generator is None:
        generator = torch.Generator().manual_seed(model.config.seed * 100003 + model.task_index(name) + 7919)
    model.start_from_tasks(sources, weights, generator)


# --- the whole step -------------------------------------------------------------------------------
def run_kkt(model: Any, encodings: Mapping[str, Any], labels: torch.Tensor | Sequence[int] | np.ndarray,
            num_labels: int, config: KKTConfig | None = None) -> KKTResult:
    """Sample, score every finished task, choose source(s) and start the learning task's mask from them.

    Call between `model.add_task(...)` and `model.begin_mask_phase()` with the new task's tokenised
    training set and its integer labels. `encodings` may be padded tensors, or whole unpadded columns
    (lists, a `datasets` column): only the sampled rows are converted and padded. CPU is fine:
    batches move to the model's device.

    `best`: the task with the highest KNN accuracy, if it exceeds the threshold (ties: the earliest
    task). `all`: every task above the threshold, weighted by accuracy minus baseline. `off`, no
    finished task, or too little data: nothing is touched (`off` returns at once, with `task=""` if
    no task is being learned).
    """
    config = config or KKTConfig()
    start = time.perf_counter()
    task = model.learning_task
    if config.mode == "off":
        return KKTResult(task=task or "", mode="off")  # no work at all
    if task is None:
        raise ValueError("run_kkt needs a task being learned: call model.add_task(name, num_labels) first.")
    if not _is_int(num_labels) or num_labels < 1:
        raise ValueError(f"num_labels must be an int >= 1, got {num_labels!r}.")
    if num_labels != model.task_info(task).num_labels:
        raise ValueError(f"num_labels={num_labels} but task {task!r} was added with {model.task_info(task).num_labels} labels.")
    chance = 1.0 / num_labels
    result = KKTResult(task=task, mode=config.mode, chance=chance, baseline=chance, threshold=chance)
    finished = model.finished_tasks
    num_examples = _num_rows(encodings)
    array = _labels_array(labels)
    if array.shape[0] != num_examples:
        raise ValueError(f"labels has {array.shape[0]} entries; encodings have {num_examples} rows.")
    if array.size and (array.min() < 0 or array.max() >= num_labels):
        raise ValueError(f"labels must be in [0, {num_labels}); got values in [{array.min()}, {array.max()}].")

    indices = select_sample(num_examples, array, config) if finished else torch.arange(0)
    result.num_samples = len(indices)
    if not finished:
        reason = "no finished task"
    elif len(indices) < MIN_SCORABLE:
        reason = f"only {len(indices)} examples (need {MIN_SCORABLE})"
        logger.warning("KKT for task %r skipped: %s.", task, reason)
    else:
        reason = ""
        sample = _take(encodings, indices, _pad_id(model))
        sample_labels = array[indices.numpy()]
        result.knn_accuracy = knn_scores(model, sample, sample_labels, config)
        fit, test = _holdout_split(sample_labels, config)
        result.k = config.resolved_k(len(fit))
        # A KNN that learned nothing answers the majority class: with imbalanced classes that beats 1/num_labels.
        values, counts = np.unique(sample_labels[fit], return_counts=True)
        result.baseline = float(np.mean(sample_labels[test] == values[np.argmax(counts)]))
        floor = max(chance, result.baseline)
        if config.min_improvement is None:
            margin = AUTO_MARGIN_STD_ERRORS * math.sqrt(floor * (1.0 - floor) / len(test))
        else:
            margin = config.min_improvement
        result.threshold = floor + margin
        above = [t for t in finished if result.knn_accuracy[t] > result.threshold]
        if config.mode == "best" and above:
            above = [max(above, key=lambda t: result.knn_accuracy[t])]  # max keeps the earliest of equals
        result.sources = above
        result.weights = [result.knn_accuracy[t] - floor for t in above]
        if above:
            generator = torch.Generator().manual_seed(config.seed * 100003 + model.task_index(task))
            apply_transfer(model, result.sources, result.weights, generator)
    result.seconds = time.perf_counter() - start
    accuracies = ", ".join(f"{t}={a:.3f}" for t, a in result.knn_accuracy.items()) or "-"
    logger.info("KKT task=%s mode=%s n=%d k=%d acc[%s] threshold=%.3f sources=%s seconds=%.2f%s", task, config.mode,
                result.num_samples, result.k, accuracies, result.threshold, result.sources or "none", result.seconds,
                f" ({reason})" if reason else "")
    return result
