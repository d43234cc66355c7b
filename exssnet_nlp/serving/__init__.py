"""Serving: classify raw text with any task of a model, or let the model infer each text's task.

- `predict(model, texts, task=...)`: tokenizes with the tokenizer that travels with the checkpoint, at the
  `max_length` the task was trained with, and returns label names and scores.
- Task-id inference (`task=None` / `"auto"`), a capability a method declares (`supports_task_inference`):
  `entropy` (SupSup's criterion, normalised by log(number of labels) so heads of different sizes compare)
  and `router` / `router_knn` / `router_class` (a nearest-centroid or KNN router on the encoder's pooled
  embeddings, fitted from a sample of each task's training data when the task finishes and stored in its
  task file under `router.*`).
"""

from .inference import (
    DEFAULT_INFERENCE,
    INFERENCE_METHODS,
    ROUTER_PREFIX,
    ROUTER_SAMPLES_PER_CLASS,
    first_task_embedding,
    fit_router,
    infer_tasks,
    prepare_serving,
    sample_per_class,
)
from .mixin import ServingMixin
from .predict import predict, read_texts

__all__ = ["DEFAULT_INFERENCE", "ServingMixin", "INFERENCE_METHODS", "ROUTER_PREFIX", "ROUTER_SAMPLES_PER_CLASS", "first_task_embedding",
           "fit_router", "infer_tasks", "predict", "prepare_serving", "read_texts", "sample_per_class"]
