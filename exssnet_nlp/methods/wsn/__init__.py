"""`wsn`: Winning SubNetworks (Kang et al., ICML 2022) on the supermask machinery of `exssnet`."""

from ...lazy import lazy_exports
from ..registry import register_method
from ..supermask import WEIGHT_LR
from .config import WSNConfig

register_method("wsn", WSNConfig, "exssnet_nlp.methods.wsn.model:WSNModel", defaults={"method": "wsn"},
                trainer_defaults=WEIGHT_LR,
                description="A mask per task learned jointly with the weights no earlier task uses (WSN, Kang et al. 2022; "
                            "zero forgetting).")

__getattr__, __dir__ = lazy_exports(__name__, {"WSNModel": ".model", "WSNLinear": ".layer", "JOINT_PHASE": ".layer",
                                               "JointMaskedWeight": ".layer"}, globals())
__all__ = ["JOINT_PHASE", "JointMaskedWeight", "WSNConfig", "WSNLinear", "WSNModel"]
