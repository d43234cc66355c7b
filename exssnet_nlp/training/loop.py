"""The training loop of one phase of one task: optimizer, schedule, steps, losses, validation curve.

The one place a training step happens (every method, every phase): the trainer decides what to learn and
in which order; this module learns it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import get_scheduler

from ..methods.base import Phase


def learning_rate(args: Any, settings: tuple[str, ...], phase: str) -> float:
    """The first of `settings` that is set (method config first, then the run's arguments)."""
    lr = next((args.setting(n) for n in settings if args.setting(n) is not None), None)
    if lr is None:
        raise ValueError(f"phase {phase!r} of method {args.method!r} has no learning rate: set one of {settings}.")
    return float(lr)


def steps_of(loader_batches: int, epochs: float, num_processes: int, accumulation: int) -> int:
    """Optimizer steps of a phase: epochs x batches per process / accumulation (rounded)."""
    per_epoch = math.ceil(loader_batches / max(num_processes, 1) / accumulation)
    return max(int(round(epochs * per_epoch)), 0)


def make_optimizer(name: str, groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (the default), or SGD with momentum 0.9 (how SupSup trains scores)."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def train_phase(trainer: Any, index: int, position: int, phase: Phase, attempt: int = 0) -> dict[str, Any]:
    """Run phase `phase` (the `position`-th) of task `index`; returns its metrics (and tells the callbacks).

    `attempt` > 0 is a restart of a stuck task: another data order."""
    args, model = trainer.args, trainer.model
    task = trainer.task_names[index]
    lr = learning_rate(args, phase.learning_rate, phase.name)
    model.begin_phase(phase.name)
    groups = [{"params": params, "lr": lr if settings is None else learning_rate(args, settings, phase.name)}
              for settings, params in model.parameter_groups(phase.name)]
    groups.append({"params": model.head_parameters(task), "lr": args.head_learning_rate or lr})
    loader = trainer.train_loader(index, seed=args.seed + 1000 * index + position + 1 + 100_003 * attempt)
    return run_steps(trainer, task, phase, groups, loader, lambda: trainer.evaluate(task, "validation"))


def run_steps(trainer: Any, task: str, phase: Phase, groups: list[dict[str, Any]], loader: Any,
              validate: Callable[[], float]) -> dict[str, Any]:
    """Train `groups` on `loader` for the phase's epochs; `task` names the task (a batch may also carry `task_ids`,
    one task index per example, for joint training). Returns the phase's metrics and tells the callbacks."""
    args, acc, model = trainer.args, trainer.accelerator, trainer.model
    epochs = float(args.setting(phase.epochs))
    lr = learning_rate(args, phase.learning_rate, phase.name)
    groups = [g for g in groups if g["params"]]
    optimizer = make_optimizer(args.setting(phase.optimizer) if phase.optimizer else "adamw", groups, lr, args.weight_decay)
    total_steps = steps_of(len(loader), epochs, acc.num_processes, args.gradient_accumulation_steps)
    schedule = args.setting(phase.lr_scheduler) if phase.lr_scheduler else "linear"
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=int(args.warmup_ratio * total_steps),
                              num_training_steps=max(total_steps, 1))
    # Re-prepare at every phase: DDP registers the trainable parameters when it wraps.
    wrapped, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)
    eval_at = {max(1, round(total_steps * (i + 1) / args.evaluations_per_phase)) for i in range(args.evaluations_per_phase)}
    curve: list[dict[str, Any]] = []
    trained = [p for g in groups for p in g["params"]]
    best = _Best(trained, validate) if args.load_best_in_phase else None
    if best is not None:
        curve.append({"step": 0, "fraction": 0.0, "accuracy": best.accuracy})
    losses: list[dict[str, Any]] = []
    step, running, batches, start = 0, 0.0, 0, time.perf_counter()
    progress = trainer.progress_bar(total_steps, f"{task} [{phase.name}]")
    wrapped.train()
    while step < total_steps:
        for batch in loader:
            task_ids = batch.pop("task_ids", None)
            names = task if task_ids is None else [trainer.task_names[i] for i in task_ids.tolist()]
            with acc.accumulate(wrapped):
                loss = wrapped(**batch, task=names).loss
                acc.backward(loss)
                if acc.sync_gradients and args.max_grad_norm:
                    acc.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running += float(loss.detach())
            batches += 1
            if not acc.sync_gradients:
                continue
            step += 1
            trainer.global_step += 1
            progress.update(1)
            if step % args.logging_steps == 0 or step == total_steps:
                mean = running / max(batches, 1)
                losses.append({"step": step, "loss": mean})
                progress.set_postfix(loss=f"{mean:.4f}")
                trainer.log_metrics({f"{task}/{phase.name}/loss": mean, f"{task}/{phase.name}/lr": scheduler.get_last_lr()[0]})
                running, batches = 0.0, 0
            if step in eval_at:
                point = {"step": step, "fraction": step / total_steps, "accuracy": validate()}
                curve.append(point)
                trainer.log_metrics({f"{task}/{phase.name}/validation_accuracy": point["accuracy"]})
                if best is not None:
                    best.offer(point["accuracy"], step, last=step >= total_steps)
                wrapped.train()
            if step >= total_steps:
                break
    progress.close()
    seconds = time.perf_counter() - start
    trainer.model = acc.unwrap_model(wrapped, keep_fp32_wrapper=False)
    acc.free_memory()  # drops the references prepare kept; the next phase prepares afresh
    metrics = {"phase": phase.name, "steps": total_steps, "seconds": seconds, "losses": losses, "curve": curve,
               "validation_accuracy": curve[-1]["accuracy"] if curve else None}
    if best is not None:
        metrics.update(best_step=best.restore(), validation_accuracy=best.accuracy)
    for cb in trainer.callbacks:
        cb.on_phase_end(trainer, task, phase.name, metrics)
    return metrics


class _Best:
    """The phase's trained tensors at its best validation point so far (`load_best_in_phase`); ties go to the later
    point, so the start is kept only when every later point is strictly worse."""

    def __init__(self, tensors: list[torch.Tensor], validate: Callable[[], float]) -> None:
        self.tensors, self.accuracy = tensors, validate()
        self.step: int | None = 0
        self.saved: list[torch.Tensor] | None = [t.detach().clone() for t in tensors]
        if math.isnan(self.accuracy):  # no validation data: nothing to choose by, the phase's end is kept
            self.step, self.saved = None, None

    def offer(self, accuracy: float, step: int, last: bool) -> None:
        if self.step is None or not accuracy >= self.accuracy:
            return
        self.accuracy, self.step = accuracy, step
        self.saved = None if last else [t.detach().clone() for t in self.tensors]  # the last point is the live state

    def restore(self) -> int | None:
        """Put the best point's tensors back (nothing to do when it is the end); returns its step (None: no choice)."""
        if self.saved is not None:
            with torch.no_grad():
                for tensor, saved in zip(self.tensors, self.saved, strict=True):
                    tensor.copy_(saved)
        return self.step
