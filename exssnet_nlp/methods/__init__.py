"""Continual methods: the contract (`base`), the registry, and the built-in methods.

Each built-in method is a sub-package that registers itself on import (its config now, its model class by
name, imported on first use); adding one is one new package plus its import line below (or a
`register_method` call in your own code).
"""

from ..lazy import lazy_exports
from . import dense, lora, osf, supermask, wsn  # noqa: F401  (registers the built-in methods)
from .config import MethodConfig, Phase
from .registry import MethodSpec, get_method, method_names, register_method

__getattr__, __dir__ = lazy_exports(__name__, {"ContinualModel": ".base", "load_pretrained": ".loading"}, globals())
__all__ = ["ContinualModel", "MethodConfig", "MethodSpec", "Phase", "get_method", "load_pretrained", "method_names",
           "register_method"]
