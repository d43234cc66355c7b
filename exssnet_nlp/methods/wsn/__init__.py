"""`wsn`: Winning SubNetworks (Kang et al., ICML 2022) on the supermask machinery of `exssnet`."""

from ..registry import register_method
from .config import WSNConfig
from .layer import JOINT_PHASE, JointMaskedWeight, WSNLinear
from .model import WSNModel

register_method("wsn", WSNConfig, WSNModel, defaults={"method": "wsn"},
                description="A mask per task learned jointly with the weights no earlier task uses (WSN, Kang et al. 2022; "
                            "zero forgetting).")

__all__ = ["JOINT_PHASE", "JointMaskedWeight", "WSNConfig", "WSNLinear", "WSNModel"]
