"""Resuming an unfinished run: recover an interrupted save, check the saved run matches, and load its state."""

from __future__ import annotations

import logging
from typing import Any

from ..checkpoint import recover_checkpoint
from ..methods import load_pretrained
from ..methods.config import MethodConfig
from ..methods.registry import TRAINER_DEFAULTS
from .arguments import resume_differences

logger = logging.getLogger("exssnet_nlp")
CHECKPOINT_DIR = "checkpoint"


def _keep_saved_settings(saved_args: dict[str, Any], args: Any) -> None:
    """A setting the command leaves unset (`args.defaulted`: the trainer settings a method defaults, and the method
    config's fields) resumes with the saved run's value, not today's default, so a changed default never changes a
    resumed run; a setting the saved run predates means what it meant then (`MethodConfig.predating`, and for the
    trainer the value before per-method defaults, `TRAINER_DEFAULTS`). A setting the command gives is compared with
    the saved one, and a difference refuses the resume; so is another method (its config is not mixed in)."""
    config, saved_config = args.method_config, saved_args.get("method_config")
    same_method = isinstance(config, MethodConfig) and isinstance(saved_config, dict) and saved_args.get("method") == args.method
    if same_method:
        saved_args["method_config"] = saved_config = type(config).saved(saved_config)
    restored = {}
    for name in getattr(args, "defaulted", ()):
        key = name.removeprefix("method_config.")
        if key != name:
            if same_method and key in saved_config:
                restored[key] = saved_config[key]
        elif isinstance(saved_args.get(name), (int, float)):  # bool included
            setattr(args, name, saved_args[name])
        elif name not in saved_args:  # a run saved before the setting existed ran with the global default
            setattr(args, name, TRAINER_DEFAULTS[name])
            saved_args[name] = TRAINER_DEFAULTS[name]
    if restored:  # rebuilt, not set field by field: the config validates and normalises them as when it was saved
        args.method_config = type(config).from_dict({**config.to_dict(), **restored})


def resume(trainer: Any) -> None:
    """Continue the unfinished run in `trainer.output_dir`, if any, after checking it was made with the same settings
    and data; a changed command is refused with one line per difference and the ways out."""
    checkpoint = trainer.output_dir / CHECKPOINT_DIR
    if trainer.accelerator.is_main_process:
        action = recover_checkpoint(checkpoint)  # a save killed mid-swap: put the checkpoint back first
        if action:
            logger.warning("recovered %s after an interrupted save (%s)", checkpoint, action)
    trainer.accelerator.wait_for_everyone()
    if not checkpoint.is_dir() or trainer.args.overwrite_output_dir or not trainer.args.resume_from_checkpoint:
        return
    loaded, saved = load_pretrained(str(checkpoint), return_trainer_state=True)
    if not saved:
        return
    state = saved["state"]
    saved_args = dict(saved.get("args") or {})
    _keep_saved_settings(saved_args, trainer.args)
    differences = resume_differences(saved_args, trainer.args.to_dict())
    if state["tasks"] != trainer.task_names:
        differences.insert(0, f"tasks: {state['tasks']} -> {trainer.task_names}")
    else:
        changed = [n for n, a, b in zip(trainer.task_names, state.get("data") or [], trainer.state["data"], strict=False)
                   if a != b]
        differences += [f"data of task {n!r}: other examples or labels than the run learned from" for n in changed]
    if differences:
        raise ValueError(
            f"output_dir {str(trainer.output_dir)!r} holds an unfinished run with other settings:\n  "
            + "\n  ".join(differences) + f"\nEither re-run with the saved settings (trainer_state.args in "
            f"{checkpoint / 'exssnet_config.json'}) to continue it, or start over with --overwrite_output_dir true "
            "(or use another output_dir).")
    if loaded.tasks != trainer.task_names[: state["next_task"]]:
        raise ValueError(f"the checkpoint in {str(trainer.output_dir)!r} holds tasks {loaded.tasks}; its trainer state "
                         f"expects {trainer.task_names[: state['next_task']]}. Start over with --overwrite_output_dir true.")
    trainer.model = loaded.train()
    trainer.state = state
    trainer.global_step = int(state.get("global_step", 0))
    if state["next_task"] >= len(trainer.task_names):  # killed after the last save, before results.json
        logger.info("every task of the run in %s is trained: writing its results", trainer.output_dir)
    else:
        logger.info("resuming at task %d/%d (%s)", state["next_task"] + 1, len(trainer.task_names),
                    trainer.task_names[state["next_task"]])
