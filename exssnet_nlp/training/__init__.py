"""Training: arguments (Python, YAML, CLI), the trainer, the phase loop, the evaluation loop, run reporting."""

from ..lazy import lazy_exports
from .arguments import ContinualTrainingArguments, load_training_config, resolve_model_path

# The trainer and evaluation need torch: imported on first use (the arguments and `--help` do not).
__getattr__, __dir__ = lazy_exports(__name__, {
    "accuracy": ".evaluation", "evaluate_checkpoint": ".evaluation", "load_for_inference": ".evaluation", "predict": ".evaluation",
    "ContinualCallback": ".trainer", "ContinualTrainer": ".trainer", "build_model": ".trainer", "run_training": ".trainer",
}, globals())
__all__ = ["ContinualCallback", "ContinualTrainer", "ContinualTrainingArguments", "accuracy", "build_model",
           "evaluate_checkpoint", "load_for_inference", "load_training_config", "predict", "resolve_model_path", "run_training"]
