"""`osf`: PEFT's Orthogonal Subspace Fine-tuning of one shared encoder, task after task, a head per task."""

from ..registry import register_method
from .config import OSFMethodConfig
from .model import OSFContinualModel

register_method("osf", OSFMethodConfig, OSFContinualModel,
                description="PEFT OSF: each task fine-tunes the shared encoder orthogonally to the top singular directions "
                            "kept so far (a growing subspace); forgets a little, no per-task encoder storage.")

__all__ = ["OSFContinualModel", "OSFMethodConfig"]
