"""`lora`: one PEFT LoRA adapter plus one head per task on the frozen shared encoder (zero forgetting)."""

from ..registry import register_method
from .config import LoraMethodConfig
from .model import LoraContinualModel

register_method("lora", LoraMethodConfig, LoraContinualModel,
                description="A PEFT LoRA adapter and a head per task on the frozen encoder (zero forgetting, r * (in + out) "
                            "weights per targeted layer per task).")

__all__ = ["LoraContinualModel", "LoraMethodConfig"]
