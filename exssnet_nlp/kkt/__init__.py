"""KNN knowledge transfer (KKT): start a new task's mask from the most similar earlier task's mask.

`config.py` holds its settings and result record; `transfer.py` samples, scores earlier tasks with a KNN on the
new task's embeddings and asks the model to start from the chosen source(s) (`model.start_from_tasks`).
"""

from ..lazy import lazy_exports
from .config import KKT_MODES, KKTConfig, KKTResult

# The transfer itself needs torch and scikit-learn: imported on first use.
__getattr__, __dir__ = lazy_exports(__name__, {n: ".transfer" for n in ("apply_transfer", "knn_scores", "run_kkt",
                                                                      "select_sample", "vote_topk")}, globals())

__all__ = ["KKT_MODES", "KKTConfig", "KKTResult", "apply_transfer", "knn_scores", "run_kkt", "select_sample", "vote_topk"]
