"""exssnet-nlp: continual learning for Hugging Face encoders with exclusive supermask subnetworks.

Names are imported on first use (PEP 562): `import exssnet_nlp` and `exssnet-nlp --help` do not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.2.0"

# name -> the module that defines it
_EXPORTS = {
    "KKTConfig": ".kkt",
    "ContinualModel": ".methods",
    "MethodConfig": ".methods",
    "Phase": ".methods",
    "get_method": ".methods",
    "load_pretrained": ".methods",
    "method_names": ".methods",
    "register_method": ".methods",
    "DenseConfig": ".methods.dense",
    "FinetuneModel": ".methods.dense",
    "IndependentModel": ".methods.dense",
    "ExSSNetConfig": ".methods.supermask",
    "ExSSNetModel": ".methods.supermask",
    "SupermaskLinear": ".methods.supermask",
    "TaskLayerNorm": ".methods.supermask",
    "DEFAULT_TARGET_MODULES": ".targets",
    "TARGET_MODULE_PRESETS": ".targets",
    "TaskHead": ".tasks",
    "TaskInfo": ".tasks",
    "ContinualCallback": ".training",
    "ContinualTrainer": ".training",
    "ContinualTrainingArguments": ".training",
    "build_model": ".training",
    "load_training_config": ".training",
    "run_training": ".training",
}

__all__ = sorted([*_EXPORTS, "__version__"])


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .kkt import KKTConfig  # noqa: F401
    from .methods import ContinualModel, MethodConfig, Phase, get_method, load_pretrained, method_names, register_method  # noqa: F401
    from .methods.dense import DenseConfig, FinetuneModel, IndependentModel  # noqa: F401
    from .methods.supermask import ExSSNetConfig, ExSSNetModel, SupermaskLinear, TaskLayerNorm  # noqa: F401
    from .targets import DEFAULT_TARGET_MODULES, TARGET_MODULE_PRESETS  # noqa: F401
    from .tasks import TaskHead, TaskInfo  # noqa: F401
    from .training import (  # noqa: F401
        ContinualCallback,
        ContinualTrainer,
        ContinualTrainingArguments,
        build_model,
        load_training_config,
        run_training,
    )
