"""exssnet-nlp: continual learning for Hugging Face encoders with exclusive supermask subnetworks."""

from .config import DEFAULT_TARGET_MODULES, ExSSNetConfig
from .layers import SupermaskLinear
from .model import ExSSNetModel, TaskHead, TaskInfo

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "ExSSNetConfig",
    "ExSSNetModel",
    "SupermaskLinear",
    "TaskHead",
    "TaskInfo",
    "__version__",
]
