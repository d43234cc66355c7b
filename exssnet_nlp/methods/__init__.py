"""Continual methods: the contract (`base`), the registry, and the built-in methods.

Each built-in method is a sub-package that registers itself on import; adding one is one new module
plus its import line below (or a `register_method` call in your own code).
"""

from . import dense, lora, osf, supermask, wsn  # noqa: F401  (registers the built-in methods)
from .base import ContinualModel, MethodConfig, Phase
from .loading import load_pretrained
from .registry import MethodSpec, get_method, method_names, register_method

__all__ = ["ContinualModel", "MethodConfig", "MethodSpec", "Phase", "get_method", "load_pretrained", "method_names",
           "register_method"]
