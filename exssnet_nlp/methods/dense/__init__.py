"""Dense baselines: `finetune` and `independent`."""

from ...lazy import lazy_exports
from ..registry import register_method
from .config import DenseConfig

register_method("finetune", DenseConfig, "exssnet_nlp.methods.dense.model:FinetuneModel",
                description="One encoder fine-tuned on each task in turn, a head per task (forgets: the reference).")
register_method("independent", DenseConfig, "exssnet_nlp.methods.dense.model:IndependentModel",
                description="A fresh fine-tuned copy of the encoder per task (zero forgetting, one encoder of storage per task).")

__getattr__, __dir__ = lazy_exports(__name__, {"FinetuneModel": ".model", "IndependentModel": ".model"}, globals())
__all__ = ["DenseConfig", "FinetuneModel", "IndependentModel"]
