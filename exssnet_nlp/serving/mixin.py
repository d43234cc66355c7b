"""`ServingMixin`: what every `ContinualModel` needs to serve raw text (mixed into it, so base.py stays small)."""

from __future__ import annotations

from typing import Any

import torch

from .inference import first_task_embedding
from .predict import predict


class ServingMixin:
    """`predict`, the task router's view (`routing_embedding`) and the serving state a checkpoint carries."""

    def _init_serving(self) -> None:
        self.tokenizer: Any = None  # saved beside the checkpoint's config
        self.encoder_reference: str | None = None  # as the user named it (Hub id, `pkg:MODULE`, path)
        self.serving_info: dict[str, dict[str, Any]] = {}  # task -> JSON, e.g. {"max_length": 128}
        self.routers: dict[str, dict[str, torch.Tensor]] = {}  # task -> router tensors (saved in its task file)

    def predict(self, texts: str | list[str], task: str | None = None, tokenizer: Any = None, batch_size: int = 32,
                max_length: int | None = None, inference: str | None = None) -> list[dict[str, Any]]:
        """[{"task", "label", "score"}] per raw text under `task`; `task=None` or `"auto"` infers each text's task
        first (`inference`: router, router_class, router_knn, entropy) and adds `task_score`. See `serving.predict`."""
        return predict(self, texts, task=task, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                       inference=inference)

    def routing_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-length mean-pooled vectors the task router compares. Default: the first task's view, which no later
        task changes when the method isolates tasks; supermask methods override it with their unmasked weights."""
        return first_task_embedding(self, input_ids, attention_mask, token_type_ids)
