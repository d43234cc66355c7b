"""`lora`: one PEFT LoRA adapter plus one head per task on the frozen shared encoder (zero forgetting)."""

from ...lazy import lazy_exports
from ..registry import register_method
from .config import LoraMethodConfig

register_method("lora", LoraMethodConfig, "exssnet_nlp.methods.lora.model:LoraContinualModel",
                description="A PEFT LoRA adapter and a head per task on the frozen encoder (zero forgetting, r * (in + out) "
                            "weights per targeted layer per task).")

__getattr__, __dir__ = lazy_exports(__name__, {"LoraContinualModel": ".model"}, globals())
__all__ = ["LoraContinualModel", "LoraMethodConfig"]
