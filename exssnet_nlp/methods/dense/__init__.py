"""Dense baselines: `finetune`, `independent` and the `multitask` reference."""

from ...lazy import lazy_exports
from ..registry import register_method
from .config import DenseConfig

register_method("finetune", DenseConfig, "exssnet_nlp.methods.dense.model:FinetuneModel",
                description="One encoder fine-tuned on each task in turn, a head per task (forgets: the reference).")
register_method("independent", DenseConfig, "exssnet_nlp.methods.dense.model:IndependentModel",
                description="A fresh fine-tuned copy of the encoder per task (zero forgetting, one encoder of storage per task).")
register_method("multitask", DenseConfig, "exssnet_nlp.methods.dense.model:MultitaskModel",
                description="One encoder and every head trained on all tasks' data at once (not continual: the upper bound).")

_MODELS = {"FinetuneModel": ".model", "IndependentModel": ".model", "MultitaskModel": ".model"}
__getattr__, __dir__ = lazy_exports(__name__, _MODELS, globals())
__all__ = ["DenseConfig", "FinetuneModel", "IndependentModel", "MultitaskModel"]
