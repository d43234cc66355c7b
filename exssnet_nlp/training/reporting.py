"""What a run tells its user: the start summary, tracker payloads, the output files, the log set-up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..io import write_json_atomic
from ..metrics import format_accuracy_matrix, plot_accuracy_matrix, plot_learning_curves
from .loop import steps_of

logger = logging.getLogger("exssnet_nlp")
RESULTS_FILE = "results.json"
HEATMAP_FILE = "accuracy_matrix.png"
CURVES_FILE = "learning_curves.png"


def configure_logging(trainer: Any) -> None:
    """The library's logger only (never the root logger): `log_level` on the main process, warnings elsewhere;
    `disable_tqdm` also quiets the progress bars of datasets and transformers (tokenising, weight loading)."""
    main = trainer.accelerator.is_main_process
    logging.getLogger("exssnet_nlp").setLevel(trainer.args.log_level.upper() if main else logging.WARNING)
    if trainer.args.disable_tqdm or not main:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def describe_run(trainer: Any) -> str:
    """World size, per-device and global batch, and the optimizer steps of every phase of every task: a 2-process
    launch halves the steps and doubles the global batch, and a user must see that before it runs."""
    args, acc = trainer.args, trainer.accelerator
    global_batch = args.per_device_train_batch_size * acc.num_processes * args.gradient_accumulation_steps
    lines = [f"{acc.num_processes} process(es) on {acc.device} ({acc.distributed_type.value}); batch per device "
             f"{args.per_device_train_batch_size} x {acc.num_processes} process(es) x {args.gradient_accumulation_steps} "
             f"accumulation = global batch {global_batch}; mixed precision {args.mixed_precision}"]
    for index, name in enumerate(trainer.task_names):
        batches = -(-len(trainer._train_sets[index]) // args.per_device_train_batch_size)
        steps = {p.name: steps_of(batches, float(args.setting(p.epochs)), acc.num_processes, args.gradient_accumulation_steps)
                 for p in trainer.model.phases()}
        lines.append(f"  task {index + 1}/{len(trainer.task_names)} {name}: {len(trainer._train_sets[index])} training "
                     f"examples, optimizer steps per phase {steps}")
    return "\n".join(lines)


def tracker_config(args: Any) -> dict[str, Any]:
    """The run's settings as flat scalars (what TensorBoard's hparams and the other trackers accept)."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                visit(f"{prefix}{key}.", inner)
        else:
            name = prefix.rstrip(".")
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)

    visit("", {k: v for k, v in args.to_dict().items() if k != "tasks"})
    return flat


def task_metrics(name: str, index: int, accuracies: dict[str, float]) -> dict[str, float]:
    """What trackers get after each task: its row of the accuracy matrix and the mean so far."""
    row = {f"accuracy_after_{index + 1:02d}_{name}/{other}": value for other, value in accuracies.items()}
    row["average_accuracy_so_far"] = sum(accuracies.values()) / max(len(accuracies), 1)
    return row


def final_metrics(results: dict[str, Any]) -> dict[str, float]:
    return {f"final/{k}": results[k] for k in ("average_accuracy", "bwt", "forgetting", "fwt")
            if isinstance(results.get(k), (int, float))}


def write_outputs(output_dir: Path, results: dict[str, Any]) -> None:
    """results.json, the heatmap (cells before a task was trained marked as its untrained accuracy) and the
    learning curves; the accuracy matrix is logged once."""
    write_json_atomic(output_dir / RESULTS_FILE, results)
    tasks = results["tasks"]
    plot_accuracy_matrix(results["accuracy_matrix"], tasks, output_dir / HEATMAP_FILE, mark_untrained=True)
    plot_learning_curves(results["curves"], tasks, output_dir / CURVES_FILE)
    logger.info("accuracy matrix (%%):\n%s", format_accuracy_matrix(results["accuracy_matrix"], tasks))
