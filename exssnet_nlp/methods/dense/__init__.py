"""Dense baselines: `finetune` and `independent`."""

from ..registry import register_method
from .model import DenseConfig, FinetuneModel, IndependentModel

register_method("finetune", DenseConfig, FinetuneModel,
                description="One encoder fine-tuned on each task in turn, a head per task (forgets: the reference).")
register_method("independent", DenseConfig, IndependentModel,
                description="A fresh fine-tuned copy of the encoder per task (zero forgetting, one encoder of storage per task).")

__all__ = ["DenseConfig", "FinetuneModel", "IndependentModel"]
