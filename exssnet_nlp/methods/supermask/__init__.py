"""Supermask methods: `exssnet` (the paper's method), `ssnet` and `supsup` (its ablations)."""

from ..registry import register_method
from .config import ExSSNetConfig
from .layer import SupermaskLinear, TaskLayerNorm
from .model import ExSSNetModel

register_method("exssnet", ExSSNetConfig, ExSSNetModel, defaults={"method": "exssnet"},
                description="A mask per task, then training of the masked weights no earlier task uses (zero forgetting).")
register_method("ssnet", ExSSNetConfig, ExSSNetModel, defaults={"method": "ssnet"},
                description="A mask per task, then training of every masked weight (forgets: the ablation of exssnet).")
register_method("supsup", ExSSNetConfig, ExSSNetModel, defaults={"method": "supsup"},
                description="A mask per task over fixed weights (SupSup, Wortsman et al. 2020; zero forgetting).")

__all__ = ["ExSSNetConfig", "ExSSNetModel", "SupermaskLinear", "TaskLayerNorm"]
