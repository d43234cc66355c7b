"""`ContinualTrainer`: a whole task sequence on Accelerate, for any registered method, and its callbacks."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase

from ..data import TaskData, TaskSpec, load_task, materialize, resolve_task_spec, tokenize_dataset
from ..methods import ContinualModel
from ..metrics import capacity_summary, summarize
from ..serving import prepare_serving
from ..targets import check_max_length
from .arguments import ContinualTrainingArguments, resolve_model_path
from .evaluation import accuracy
from .joint import joint_summary, learn_jointly
from .loop import train_phase
from .reporting import RESULTS_FILE, configure_logging, describe_run, final_metrics, task_metrics, tracker_config, write_outputs
from .resume import CHECKPOINT_DIR, resume

logger = logging.getLogger("exssnet_nlp")

STREAM_EVAL_SAMPLES_PER_CLASS = 200  # a streamed test split is sampled, never read whole


class ContinualCallback:
    """Task-level events of a continual run. Subclass and override what you need.

    Events, in order: `on_train_begin`; per task `on_task_begin`, `on_phase_end` (per phase, with its
    metrics), `on_evaluate` (accuracies of every task seen so far), `on_task_end`; then `on_train_end`.
    """

    def on_train_begin(self, trainer: ContinualTrainer) -> None: ...
    def on_task_begin(self, trainer: ContinualTrainer, task: str) -> None: ...
    def on_phase_end(self, trainer: ContinualTrainer, task: str, phase: str, metrics: dict[str, Any]) -> None: ...
    def on_evaluate(self, trainer: ContinualTrainer, task: str, accuracies: dict[str, float]) -> None: ...
    def on_task_end(self, trainer: ContinualTrainer, task: str) -> None: ...
    def on_train_end(self, trainer: ContinualTrainer, results: dict[str, Any]) -> None: ...




def build_model(args: ContinualTrainingArguments, encoder: Any = None) -> ContinualModel:
    """The model of `args.method` around `encoder` (default: `args.model_name_or_path`)."""
    source = encoder if encoder is not None else resolve_model_path(args.model_name_or_path)
    if source is None:
        raise ValueError("model_name_or_path is not set: give a Hub id or a local path (e.g. --model_name_or_path bert-base-uncased).")
    return args.method_spec.build(source, args.method_config)


class ContinualTrainer:
    """Learns `tasks` one after another and measures every task after each one.

    Per task: (KKT) -> evaluation of the untrained task (forward transfer) -> mask phase -> weight phase
    (per method; the task is learned again when its first phase ends at chance, `restart_stuck_tasks`) ->
    `finish_task` -> evaluation of every task seen so far -> checkpoint. A `learns_jointly` method (multitask)
    learns every task at once instead (`training/joint.py`).
    """

    def __init__(self, model, args: ContinualTrainingArguments, tasks: list[TaskSpec | dict | str | TaskData],
                 tokenizer: PreTrainedTokenizerBase | None = None, callbacks: list[ContinualCallback] | None = None,
                 accelerator: Accelerator | None = None) -> None:
        if isinstance(tasks, (str, dict)):
            raise ValueError(f"tasks must be a list (e.g. [{tasks!r}]), not a single {type(tasks).__name__}.")
        if args.kkt.mode != "off" and not model.supports_kkt:
            # Checked now, not when the second task starts: KKT would silently never run.
            raise ValueError(f"method {args.method!r} does not support KKT (kkt mode {args.kkt.mode!r}); set --kkt_mode off "
                             "or use a supermask method (exssnet, supsup, ssnet, wsn).")
        check_max_length(model.encoder, args.max_length)
        self.model = model
        self.args = args
        self.callbacks = list(callbacks or [])
        foreign = [type(cb).__name__ for cb in self.callbacks if not isinstance(cb, ContinualCallback)]
        if foreign:
            # transformers' TrainerCallback events take (args, state, control): they belong to transformers.Trainer.
            raise ValueError(f"callbacks {foreign} are not exssnet_nlp.ContinualCallback subclasses; subclass "
                             "ContinualCallback (events on_train_begin, on_task_begin, on_phase_end, on_evaluate, on_task_end, "
                             "on_train_end, each given the trainer) instead of transformers.TrainerCallback.")
        # Without a GPU, a multi-process launch (torchrun, accelerate launch) means gloo on CPU: Accelerate
        # only picks that when told cpu=True.
        cpu = args.cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
        trackers = None if args.report_to == "none" else args.report_to.split(",") if args.report_to != "all" else "all"
        self.accelerator = accelerator or Accelerator(mixed_precision=args.mixed_precision, cpu=cpu, log_with=trackers,
                                                      project_dir=args.output_dir,
                                                      gradient_accumulation_steps=args.gradient_accumulation_steps)
        self.output_dir = Path(args.output_dir)
        self._check_output_dir()
        if tokenizer is None:
            path = resolve_model_path(args.model_name_or_path) or getattr(getattr(model, "encoder", None), "name_or_path", None)
            if not path:
                raise ValueError("no tokenizer: pass tokenizer=... or set model_name_or_path.")
            tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer = tokenizer
        model.tokenizer = tokenizer  # saved with every checkpoint: it serves raw text on its own
        # Every task is loaded and checked before any training starts: bad input fails fast.
        self.task_data = [self._load(t) for t in tasks]
        names = [t.spec.name for t in self.task_data]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique; got {names}. Give repeated tasks distinct `name`s.")
        if not names:
            raise ValueError("no tasks given: set `tasks` in the config or pass --tasks.")
        self.task_names = names
        self.state: dict[str, Any] = self._fresh_state()
        self.global_step = 0  # optimizer steps of this process's run (the trackers' x axis)

    # --- setup -------------------------------------------------------------------------------
    def _check_output_dir(self) -> None:
        results = self.output_dir / RESULTS_FILE
        if results.exists() and not self.args.overwrite_output_dir:
            raise ValueError(f"output_dir {str(self.output_dir)!r} already holds a finished run ({RESULTS_FILE}). "
                             "Pick another output_dir or pass --overwrite_output_dir true.")

    def _load(self, task: TaskSpec | dict | str | TaskData) -> TaskData:
        if isinstance(task, TaskData):
            return task
        spec = resolve_task_spec({"name": task} if isinstance(task, str) else task)
        eval_cap = self.args.eval_samples_per_class
        if spec.streaming:
            # A stream is read only as far as the per-class samples need: training by epochs wants a length.
            if self.args.train_samples_per_class is None:
                raise ValueError(f"task {spec.name!r} is streamed: set train_samples_per_class (the per-class sample the "
                                 "trainer takes from the stream), or set streaming: false to load it whole.")
            if eval_cap is None:
                eval_cap = STREAM_EVAL_SAMPLES_PER_CLASS
                logger.info("task %s is streamed: evaluating on %d test examples per class (eval_samples_per_class)",
                            spec.name, eval_cap)
        data = load_task(spec, train_samples_per_class=self.args.train_samples_per_class, eval_samples_per_class=eval_cap,
                         validation_samples_per_class=self.args.validation_samples_per_class, seed=self.args.seed)
        return materialize(data) if spec.streaming else data

    def _fresh_state(self) -> dict[str, Any]:
        n = len(self.task_names)
        return {"tasks": self.task_names, "data": [d.fingerprint() for d in self.task_data], "next_task": 0,
                "accuracy_matrix": [[None] * n for _ in range(n)],
                "untrained": [None] * n, "curves": {}, "kkt": {}, "timings": {}, "losses": {}, "storage": {}}

    def _tokenize(self, data: TaskData, split: str):
        dataset = getattr(data, split)
        if dataset is None or (hasattr(dataset, "__len__") and len(dataset) == 0):
            return None
        if not hasattr(dataset, "__len__"):
            raise ValueError(f"task {data.spec.name!r}: streamed splits are not supported by the trainer yet; "
                             "set streaming: false and cap the data with train_samples_per_class.")
        return tokenize_dataset(dataset, self.tokenizer, self.args.max_length)

    def _loader(self, dataset, train: bool, seed: int) -> DataLoader:
        collator = DataCollatorWithPadding(self.tokenizer)
        generator = torch.Generator().manual_seed(seed)
        batch = self.args.per_device_train_batch_size if train else self.args.per_device_eval_batch_size
        return DataLoader(dataset, batch_size=batch, shuffle=train, collate_fn=collator, generator=generator,
                          num_workers=self.args.dataloader_num_workers)

    def train_loader(self, index: int, seed: int) -> DataLoader:
        """The shuffled training loader of task `index` (seeded per task and phase: a resumed run sees the same batches)."""
        return self._loader(self._train_sets[index], train=True, seed=seed)

    def log_metrics(self, values: dict[str, float]) -> None:
        """Send `values` to the trackers of `report_to` (none by default), at the run's optimizer step so far."""
        if self.args.report_to != "none":
            self.accelerator.log(values, step=self.global_step)

    def progress_bar(self, total: int, desc: str, position: int = 1, leave: bool = False):
        disable = self.args.disable_tqdm if self.args.disable_tqdm is not None else None
        return tqdm(total=total, desc=desc, disable=disable or not self.accelerator.is_local_main_process, leave=leave,
                    position=position)

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self, task: str, split: str = "test") -> float:
        """Accuracy of `task` on `split`, gathered over processes (NaN when the split is empty)."""
        loader = self._eval_loaders[(task, split)]
        if loader is None:
            return float("nan")
        return accuracy(self.model, loader, task, self.accelerator)

    # --- the sequence -------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Learn every task in order; returns (and writes) the results."""
        acc = self.accelerator
        if self.args.overwrite_output_dir and acc.is_main_process:
            # The old run's results go now: left beside a new partial run, they would make its resume refuse.
            (self.output_dir / RESULTS_FILE).unlink(missing_ok=True)
        configure_logging(self)
        resume(self)
        self.model.to(acc.device)
        self._train_sets = [self._tokenize(d, "train") for d in self.task_data]
        for name, train_set in zip(self.task_names, self._train_sets, strict=True):
            if train_set is None:
                raise ValueError(f"task {name!r} has an empty train split; check its train_file / dataset.")
        self._eval_loaders = {}
        for i, data in enumerate(self.task_data):
            for split in ("validation", "test"):
                dataset = self._tokenize(data, split)
                self._eval_loaders[(self.task_names[i], split)] = (
                    None if dataset is None else acc.prepare(self._loader(dataset, train=False, seed=0)))
        if acc.is_main_process:
            logger.info("run: %s", describe_run(self))
        if self.args.report_to != "none":
            acc.init_trackers(self.output_dir.name or "exssnet-nlp", config=tracker_config(self.args))
        for cb in self.callbacks:
            cb.on_train_begin(self)
        start_run = time.perf_counter()
        if self.state["next_task"] == 0 and any(u is None for u in self.state["untrained"]):
            self._measure_untrained()
        # One bar over the whole sequence; each phase's bar runs under it.
        self._sequence_bar = self.progress_bar(len(self.task_names), "tasks", position=0, leave=True)
        self._sequence_bar.update(self.state["next_task"])
        if self.model.learns_jointly and self.state["next_task"] == 0:
            learn_jointly(self, self._train_sets, self._loader, self._conclude)
            self._sequence_bar.update(len(self.task_names))
        for index in range(self.state["next_task"], len(self.task_names)):
            self._learn(index)
            self._sequence_bar.update(1)
        self._sequence_bar.close()
        results = self._results(time.perf_counter() - start_run)
        if acc.is_main_process:
            write_outputs(self.output_dir, results)
        self.log_metrics(final_metrics(results))
        if self.args.report_to != "none":
            acc.end_training()
        acc.wait_for_everyone()
        for cb in self.callbacks:
            cb.on_train_end(self, results)
        return results

    def _measure_untrained(self) -> None:
        """Each task's accuracy under the untrained model (its seeded initial head and mask): the FWT reference."""
        for i, name in enumerate(self.task_names):
            data = self.task_data[i]
            self.model.add_task(name, data.num_labels, data.label_names)
            self.model.to(self.accelerator.device)
            self.state["untrained"][i] = self.evaluate(name)
            self.model.discard_task()

    def _learn(self, index: int) -> None:
        args = self.args
        name, data = self.task_names[index], self.task_data[index]
        for cb in self.callbacks:
            cb.on_task_begin(self, name)
        timings: dict[str, float] = {}  # summed over attempts: a restart's cost shows in the task's time
        for attempt in range(args.restart_stuck_tasks + 1):
            phases = self._attempt(index, attempt, timings)
            first = next(iter(phases.values()))
            chance = 1.0 / data.num_labels
            stuck = first["validation_accuracy"] is not None and first["validation_accuracy"] <= chance + args.stuck_margin
            if not stuck:
                break
            record = {"attempt": attempt, "phase": first["phase"], "validation_accuracy": first["validation_accuracy"],
                      "chance": chance, "restarted": attempt < args.restart_stuck_tasks}
            self.state.setdefault("restarts", {}).setdefault(name, []).append(record)
            if not record["restarted"]:
                logger.warning("task %s: phase %s still at chance (validation accuracy %.4f) after %d restart(s); keeping it",
                               name, first["phase"], first["validation_accuracy"], attempt)
                break
            logger.warning("task %s: phase %s ended at chance (validation accuracy %.4f <= %.4f + %.2f); restarting the "
                           "task (attempt %d)", name, first["phase"], first["validation_accuracy"], chance, args.stuck_margin,
                           attempt + 2)
            self.model.discard_task()
        self._conclude(name, [index], phases, timings)

    def _attempt(self, index: int, attempt: int, timings: dict[str, float]) -> dict[str, Any]:
        """Add task `index` and train its phases (their metrics); attempt > 0 (a restart) draws another head, scores
        and data order."""
        args = self.args
        name, data = self.task_names[index], self.task_data[index]
        set_seed(args.seed + index + 7919 * attempt)  # per-task seeding: a resumed run equals an uninterrupted one
        self.model.add_task(name, data.num_labels, data.label_names,
                            init_seed=None if attempt == 0 else args.seed + 7919 * attempt)
        self.model.to(self.accelerator.device)
        if index > 0 and args.kkt.mode != "off" and self.model.supports_kkt:
            self.state["kkt"][name] = self._run_kkt(index)
            timings["kkt"] = timings.get("kkt", 0.0) + self.state["kkt"][name]["seconds"]
        if index > 0 and attempt == 0:
            self.state["accuracy_matrix"][index - 1][index] = self.evaluate(name)
        phases = {}
        for position, phase in enumerate(self.model.phases()):
            metrics = train_phase(self, index, position, phase, attempt)
            phases[phase.name] = metrics
            timings[phase.name] = timings.get(phase.name, 0.0) + metrics["seconds"]
        return phases

    def _conclude(self, name: str, learned: list[int], phases: dict[str, Any], timings: dict[str, float]) -> None:
        """After training `learned` (one task, or every task of a joint run, reported under `name`): finish them,
        fit routers, evaluate every task seen so far, record, checkpoint."""
        last = learned[-1]
        if self.model.learning_task is not None:
            self.model.finish_task()
        start = time.perf_counter()
        for j in range(last + 1):  # every router, refitted: a task's training may move the routing view (exssnet)
            prepare_serving(self.model, self.task_names[j], self.args.max_length, self._train_sets[j], self._loader, self.args.seed)
        timings["serving"] = time.perf_counter() - start
        start = time.perf_counter()
        accuracies = {other: self.evaluate(other) for other in self.task_names[: last + 1]}
        timings["evaluate"] = time.perf_counter() - start
        for j, other in enumerate(self.task_names[: last + 1]):
            self.state["accuracy_matrix"][last][j] = accuracies[other]
        self.state["curves"][name] = {p: m["curve"] for p, m in phases.items()}
        self.state["losses"][name] = {p: m["losses"] for p, m in phases.items()}
        self.state["timings"][name] = timings
        for i in learned:
            self.state["storage"][self.task_names[i]] = self.model.task_storage_bytes(self.task_names[i])
        val = {p: m["validation_accuracy"] for p, m in phases.items()}
        last_loss = {p: (m["losses"][-1]["loss"] if m["losses"] else None) for p, m in phases.items()}
        if self.accelerator.is_main_process:
            logger.info("task %d/%d %s: loss %s, validation accuracy %s, test accuracy %s (%.1fs)", last + 1,
                        len(self.task_names), name, _fmt(last_loss), _fmt(val),
                        _fmt({t: accuracies[t] for t in (self.task_names[i] for i in learned)}), sum(timings.values()))
        self.log_metrics(task_metrics(self.task_names[last], last, accuracies))
        for cb in self.callbacks:
            cb.on_evaluate(self, name, accuracies)
        self.state["next_task"] = last + 1
        self.state["global_step"] = self.global_step  # a resumed run's trackers continue at the right step
        self._save(last)
        for cb in self.callbacks:
            cb.on_task_end(self, name)

    def _run_kkt(self, index: int) -> dict[str, Any]:
        train = self._train_sets[index]
        # run_kkt pads and moves only the rows it samples.
        encodings = {k: train[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in train.column_names}
        result = self.model.knowledge_transfer(encodings, train["labels"], self.args.kkt)
        return result.to_dict()

    # --- persistence ---------------------------------------------------------------------------
    def _save(self, index: int) -> None:
        """Checkpoint and resume state in one atomic swap: a crash leaves the previous pair whole."""
        if not self.args.save_checkpoints or not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(self.output_dir / CHECKPOINT_DIR),
                                   trainer_state={"state": self.state, "args": self.args.to_dict()})
        self.accelerator.wait_for_everyone()

    def _results(self, wall_seconds: float) -> dict[str, Any]:
        state = self.state
        metrics = (joint_summary(state["accuracy_matrix"]) if self.model.learns_jointly
                   else summarize(state["accuracy_matrix"], state["untrained"]))
        layers = self.model.capacity()
        capacity = capacity_summary(layers) if layers else None
        shared = self.model.shared_storage_bytes()
        stored = sum(s["total"] for s in state["storage"].values()) + shared
        return {
            "tasks": self.task_names,
            "method": self.args.method,
            "accuracy_matrix": state["accuracy_matrix"],
            "untrained_accuracy": state["untrained"],
            **metrics,
            "capacity": capacity,
            "kkt": state["kkt"],
            "restarts": state.get("restarts", {}),
            "curves": state["curves"],
            "losses": state["losses"],
            "timings": {"per_task": state["timings"], "wall_seconds": wall_seconds},
            "storage": {"per_task": state["storage"], "shared": shared, "stored_bytes": stored},
            "config": self.args.to_dict(),
        }


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def run_training(args: ContinualTrainingArguments, tasks: list[dict | str] | None = None,
                 callbacks: list[ContinualCallback] | None = None) -> dict[str, Any]:
    """Build the model for `args` and learn `tasks` (default: `args.tasks`). Returns the results.

    Logging handlers are the application's business: this configures none (the CLI does)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = build_model(args)
    trainer = ContinualTrainer(model, args, tasks or args.tasks or [], callbacks=callbacks)
    return trainer.train()
