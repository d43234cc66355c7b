"""exssnet-nlp: continual learning for Hugging Face encoders with exclusive supermask subnetworks."""

from .kkt import KKTConfig
from .methods import ContinualModel, MethodConfig, Phase, get_method, load_pretrained, method_names, register_method
from .methods.dense import DenseConfig, FinetuneModel, IndependentModel
from .methods.supermask import ExSSNetConfig, ExSSNetModel, SupermaskLinear, TaskLayerNorm
from .targets import DEFAULT_TARGET_MODULES, TARGET_MODULE_PRESETS
from .tasks import TaskHead, TaskInfo
from .training import (
    ContinualCallback,
    ContinualTrainer,
    ContinualTrainingArguments,
    TrainerCallback,
    build_model,
    load_training_config,
    run_training,
)

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "TARGET_MODULE_PRESETS",
    "ContinualCallback",
    "ContinualModel",
    "ContinualTrainer",
    "ContinualTrainingArguments",
    "DenseConfig",
    "ExSSNetConfig",
    "ExSSNetModel",
    "FinetuneModel",
    "IndependentModel",
    "KKTConfig",
    "MethodConfig",
    "Phase",
    "SupermaskLinear",
    "TaskHead",
    "TaskInfo",
    "TaskLayerNorm",
    "TrainerCallback",
    "__version__",
    "build_model",
    "get_method",
    "load_pretrained",
    "load_training_config",
    "method_names",
    "register_method",
    "run_training",
]
