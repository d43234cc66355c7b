"""exssnet-nlp: continual learning for Hugging Face encoders with exclusive supermask subnetworks."""

from .baselines import DenseContinualModel
from .config import DEFAULT_TARGET_MODULES, TARGET_MODULE_PRESETS, ExSSNetConfig
from .layers import SupermaskLinear, TaskLayerNorm
from .model import ExSSNetModel, TaskHead, TaskInfo
from .trainer import ContinualTrainer, ContinualTrainingArguments, TrainerCallback, build_model, load_training_config, run_training

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "TARGET_MODULE_PRESETS",
    "ContinualTrainer",
    "ContinualTrainingArguments",
    "DenseContinualModel",
    "ExSSNetConfig",
    "ExSSNetModel",
    "SupermaskLinear",
    "TaskHead",
    "TaskInfo",
    "TaskLayerNorm",
    "TrainerCallback",
    "__version__",
    "build_model",
    "load_training_config",
    "run_training",
]
