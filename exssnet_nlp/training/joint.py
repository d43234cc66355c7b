"""Joint training: every task's data at once, for the methods that learn jointly (`learns_jointly`: `multitask`).

Not continual learning: the reference the continual methods are measured against. Every task is registered first
(with its seeded head), then one run of each phase trains the encoder and every head on shuffled batches that mix
the tasks (`task_ids` per example); the result fills the last row of the accuracy matrix only, so BWT, forgetting
and FWT are undefined (None). A joint run checkpoints once, at the end: an interrupted one starts over.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from accelerate.utils import set_seed
from torch.utils.data import ConcatDataset, Dataset

from .loop import learning_rate, run_steps

JOINT = "all tasks"  # the name a joint run's curves, timings and callback events are reported under


class _Tagged(Dataset):
    """A tokenized task split whose rows carry their task's index (`task_ids`), for batches that mix tasks."""

    def __init__(self, data: Any, task_id: int) -> None:
        self.data, self.task_id = data, task_id

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.data[i], "task_ids": self.task_id}


def learn_jointly(trainer: Any, train_sets: Sequence[Any], make_loader: Callable[..., Any],
                  conclude: Callable[..., None]) -> None:
    """Register every task, train them together, then evaluate, record and checkpoint as one step.

    The trainer hands over its tokenized training splits, its loader factory and its end-of-step routine (evaluate,
    record, checkpoint), so a joint run shares them with the task-by-task loop without reaching into the trainer."""
    args, model = trainer.args, trainer.model
    set_seed(args.seed)
    for name, data in zip(trainer.task_names, trainer.task_data, strict=True):
        model.add_task(name, data.num_labels, data.label_names)
        for phase in model.phases():  # through the task's states with no step: registered with its seeded head
            model.begin_phase(phase.name)
        model.finish_task()  # begin_joint makes every head trainable again
    model.to(trainer.accelerator.device)
    for cb in trainer.callbacks:
        cb.on_task_begin(trainer, JOINT)
    mixed = ConcatDataset([_Tagged(d, i) for i, d in enumerate(train_sets)])
    phases, timings = {}, {}
    for position, phase in enumerate(trainer.model.phases()):
        lr = learning_rate(args, phase.learning_rate, phase.name)
        heads = trainer.model.begin_joint()
        groups = [{"params": list(trainer.model.encoder.parameters()), "lr": lr},
                  {"params": heads, "lr": args.head_learning_rate or lr}]
        loader = make_loader(mixed, train=True, seed=args.seed + position + 1)
        metrics = run_steps(trainer, JOINT, phase, groups, loader, lambda: _mean_validation(trainer))
        trainer.model.end_joint()
        phases[phase.name] = metrics
        timings[phase.name] = metrics["seconds"]
    conclude(JOINT, list(range(len(trainer.task_names))), phases, timings)


def _mean_validation(trainer: Any) -> float:
    values = [v for v in (trainer.evaluate(t, "validation") for t in trainer.task_names) if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def joint_summary(matrix: list[list[float | None]]) -> dict[str, float | None]:
    """A joint run's metrics: the mean of its one row (every task after training on all); the continual ones are None."""
    row = [v for v in matrix[-1] if v is not None]
    return {"average_accuracy": sum(row) / len(row) if row else None, "bwt": None, "forgetting": None, "fwt": None}


__all__ = ["JOINT", "joint_summary", "learn_jointly"]
