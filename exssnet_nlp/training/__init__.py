"""Training: arguments (Python, YAML, CLI), the trainer's loop, the evaluation loop."""

from .arguments import ContinualTrainingArguments, load_training_config, resolve_model_path
from .evaluation import accuracy, evaluate_checkpoint, load_for_inference, predict
from .trainer import ContinualCallback, ContinualTrainer, build_model, run_training

__all__ = ["ContinualCallback", "ContinualTrainer", "ContinualTrainingArguments", "accuracy", "build_model",
           "evaluate_checkpoint", "load_for_inference", "load_training_config", "predict", "resolve_model_path", "run_training"]
