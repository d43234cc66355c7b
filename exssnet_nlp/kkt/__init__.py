"""KNN knowledge transfer (KKT): start a new task's mask from the most similar earlier task's mask.

`config.py` holds its settings and result record; `transfer.py` samples, scores earlier tasks with a KNN on the
new task's embeddings and asks the model to start from the chosen source(s) (`model.start_from_tasks`).
"""

from .config import KKT_MODES, KKTConfig, KKTResult
from .transfer import apply_transfer, knn_scores, run_kkt, select_sample, vote_topk

__all__ = ["KKT_MODES", "KKTConfig", "KKTResult", "apply_transfer", "knn_scores", "run_kkt", "select_sample", "vote_topk"]
