"""`osf`: PEFT's Orthogonal Subspace Fine-tuning of one shared encoder, task after task, a head per task."""

from ...lazy import lazy_exports
from ..registry import register_method
from .config import OSFMethodConfig

register_method("osf", OSFMethodConfig, "exssnet_nlp.methods.osf.model:OSFContinualModel",
                description="PEFT OSF: each task fine-tunes the shared encoder orthogonally to the top singular directions "
                            "kept so far (a growing subspace); forgets a little, no per-task encoder storage.")

__getattr__, __dir__ = lazy_exports(__name__, {"OSFContinualModel": ".model"}, globals())
__all__ = ["OSFContinualModel", "OSFMethodConfig"]
