"""The continual-learning accuracy matrix and the metrics derived from it.

``A[i][j]`` is the test accuracy (a fraction in [0, 1]) on task j after training task i, for
a sequence of T tasks: a T x T list of lists with ``None`` (JSON null) where nothing was
evaluated. ``A[i][i+1]`` is measured before task i+1 is trained (its head is fresh), which is
what forward transfer needs; ``untrained[j]`` is task j's accuracy under the model before any
training of task j, measured by the caller.

When a run stops early, the metrics use the trained prefix: the first T' rows whose diagonal
``A[i][i]`` is filled, i.e. the T' x T' top-left block, with T' in place of T below.

All arithmetic is on plain Python floats, so a difference of equal accuracies is exactly 0.0
(BWT of a model that forgets nothing is 0.0, not 1e-17).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .io import write_bytes_atomic, write_json_atomic

Matrix = Sequence[Sequence[float | None]]

__all__ = [
    "average_accuracy",
    "bwt",
    "capacity_summary",
    "forgetting",
    "format_accuracy_matrix",
    "fwt",
    "new_accuracy_matrix",
    "plot_accuracy_matrix",
    "summarize",
    "trained_tasks",
    "write_json_atomic",
]


def new_accuracy_matrix(num_tasks: int) -> list[list[float | None]]:
    """A T x T matrix of ``None`` to fill in as tasks are trained and evaluated."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
    return [[None] * num_tasks for _ in range(num_tasks)]


def _check_square(A: Matrix) -> int:
    size = len(A)
    if size == 0:
        raise ValueError("the accuracy matrix is empty; it needs one row and one column per task")
    for i, row in enumerate(A):
        if len(row) != size:
            raise ValueError(f"the accuracy matrix must be T x T with T={size}, but row {i} has {len(row)} entries")
    return size


def trained_tasks(A: Matrix) -> int:
    """T': how many leading tasks have been trained and evaluated (``A[i][i]`` filled for i < T').

    Raises ValueError when no task has been trained yet.
    """
    size = _check_square(A)
    count = 0
    while count < size and A[count][count] is not None:
        count += 1
    if count == 0:
        raise ValueError("no task has been evaluated after its own training yet (A[0][0] is None)")
    return count


def _entry(A: Matrix, i: int, j: int) -> float:
    value = A[i][j]
    if value is None:
        raise ValueError(f"A[{i}][{j}] (accuracy on task {j} after training task {i}) is missing; "
                         f"evaluate every trained task after each task")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"A[{i}][{j}] is NaN")
    return value


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def average_accuracy(A: Matrix) -> float:
    """Average accuracy after the last trained task: ``ACC = (1/T) * sum_j A[T-1][j]``."""
    t = trained_tasks(A)
    return _mean([_entry(A, t - 1, j) for j in range(t)])


def bwt(A: Matrix) -> float:
    """Backward transfer: ``BWT = 1/(T-1) * sum_{j<T-1} (A[T-1][j] - A[j][j])``; 0.0 when T == 1.

    Negative values mean earlier tasks got worse (forgetting); a model whose old-task accuracies
    never change gets exactly 0.0.
    """
    t = trained_tasks(A)
    if t == 1:
        return 0.0
    return _mean([_entry(A, t - 1, j) - _entry(A, j, j) for j in range(t - 1)])


def forgetting(A: Matrix) -> float:
    """Average forgetting: ``F = 1/(T-1) * sum_{j<T-1} (max_{i in [j, T-2]} A[i][j] - A[T-1][j])``; 0.0 when T == 1.

    How far each earlier task fell below the best accuracy it ever had before the last task
    (Chaudhry et al., 2018). Never negative unless the last task improved an old one.
    """
    t = trained_tasks(A)
    if t == 1:
        return 0.0
    return _mean([max(_entry(A, i, j) for i in range(j, t - 1)) - _entry(A, t - 1, j) for j in range(t - 1)])


def fwt(A: Matrix, untrained: Sequence[float | None] | None) -> float | None:
    """Forward transfer: ``FWT = 1/(T-1) * sum_{j>=1} (A[j-1][j] - untrained[j])``.

    ``A[j-1][j]`` is task j's accuracy after training tasks 0..j-1 but before task j itself;
    ``untrained[j]`` the same under the model before any training of j. The mean runs over
    the j in 1..T-1 where both are known; None when there is no such j (T == 1, no
    ``untrained``, or nothing measured).
    """
    t = trained_tasks(A)
    if untrained is None or t == 1:
        return None
    if len(untrained) < t:
        raise ValueError(f"untrained has {len(untrained)} entries but {t} tasks were trained; give one per task (None where unknown)")
    gains = []
    for j in range(1, t):
        before, base = A[j - 1][j], untrained[j]
        if before is None or base is None:
            continue
        gains.append(float(before) - float(base))
    return _mean(gains) if gains else None


def summarize(A: Matrix, untrained: Sequence[float | None] | None = None) -> dict[str, float | None]:
    """``{"average_accuracy", "bwt", "forgetting", "fwt"}`` of the trained prefix (fwt may be None)."""
    return {"average_accuracy": average_accuracy(A), "bwt": bwt(A), "forgetting": forgetting(A), "fwt": fwt(A, untrained)}


def _pct(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{100.0 * float(value):.{digits}f}"


def format_accuracy_matrix(A: Matrix, tasks: Sequence[str], untrained: Sequence[float | None] | None = None, digits: int = 1) -> str:
    """A plain-text table of the matrix in percent: one row per "after task i", one column per task.

    ``-`` marks entries that were not evaluated; ``untrained`` (if given) adds a last row.
    """
    size = _check_square(A)
    if len(tasks) != size:
        raise ValueError(f"{len(tasks)} task names for a {size} x {size} accuracy matrix")
    rows = [[f"after {i}: {name}", *(_pct(v, digits) for v in A[i])] for i, name in enumerate(tasks)]
    if untrained is not None:
        rows.append(["untrained", *(_pct(v, digits) for v in list(untrained)[:size])])
    header = ["acc % (row: trained through; col: evaluated on)", *tasks]
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(size + 1)]
    lines = ["  ".join([header[0].ljust(widths[0]), *(h.rjust(w) for h, w in zip(header[1:], widths[1:], strict=True))])]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join([r[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True))]) for r in rows]
    return "\n".join(lines)


def plot_accuracy_matrix(A: Matrix, tasks: Sequence[str], path: str | os.PathLike[str], title: str | None = None,
                         mark_untrained: bool = False) -> Path:
    """Save the matrix as an annotated heatmap PNG (percent; blank where not evaluated), atomically.

    With `mark_untrained`, cells right of the diagonal (task j evaluated before it was trained: the forward-
    transfer reference) are hatched and labelled "untrained".

    Uses the Agg canvas directly (no pyplot), so it works headless and leaves the global
    matplotlib backend alone.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    size = _check_square(A)
    if len(tasks) != size:
        raise ValueError(f"{len(tasks)} task names for a {size} x {size} accuracy matrix")
    values = np.array([[np.nan if v is None else 100.0 * float(v) for v in row] for row in A], dtype=float)
    side = max(4.0, 1.1 * size + 2.0)
    fig = Figure(figsize=(side, side * 0.85))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=100.0, cmap="viridis")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_xticks(range(size), labels=list(tasks), rotation=30, ha="right")
    ax.set_yticks(range(size), labels=[f"after {name}" for name in tasks])
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained through")
    for i in range(size):
        for j in range(size):
            if np.isnan(values[i, j]):
                continue
            untrained = mark_untrained and j > i
            if untrained:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="lightgray", linewidth=0))
            label = f"{values[i, j]:.1f}" + ("\nuntrained" if untrained else "")
            ax.text(j, i, label, ha="center", va="center", color="white" if values[i, j] < 60 else "black",
                    fontsize=8 if untrained else 9, style="italic" if untrained else "normal")
    ax.set_title(title or "accuracy matrix")
    fig.tight_layout()
    return write_bytes_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=110))


def plot_learning_curves(curves: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]], tasks: Sequence[str],
                         path: str | os.PathLike[str]) -> Path:
    """Validation accuracy against optimizer steps, one panel per task, one line per phase (PNG, atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [t for t in tasks if curves.get(t)]
    columns = max(1, min(len(shown), 3))
    rows = max(1, -(-len(shown) // columns))
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows))
    FigureCanvasAgg(fig)
    for k, task in enumerate(shown):
        ax = fig.add_subplot(rows, columns, k + 1)
        offset = 0
        for phase, points in curves[task].items():
            steps = [offset + p["step"] for p in points]
            ax.plot(steps, [None if p["accuracy"] is None else 100.0 * p["accuracy"] for p in points], marker="o", label=phase)
            offset = steps[-1] if steps else offset
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("optimizer step (phases one after another)", fontsize=8)
        ax.set_ylabel("validation accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not shown:
        fig.add_subplot(1, 1, 1).text(0.5, 0.5, "no validation points (validation_samples_per_class: 0)", ha="center")
    fig.tight_layout()
    return write_bytes_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=100))


def capacity_summary(capacity: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Per-layer capacity plus means.

    ``capacity`` maps a layer name to ``{"used", "free", "density"}`` (fractions of the layer's
    weights that some task's mask uses, that no task uses yet, and the last mask's density).
    Returns ``{"layers": {name: {...}}, "mean_used", "mean_free", "num_layers"}`` (means None
    when there are no layers).
    """
    layers: dict[str, dict[str, float]] = {}
    for name, stats in capacity.items():
        missing = [k for k in ("used", "free") if k not in stats]
        if missing:
            raise ValueError(f"capacity of layer {name!r} lacks {missing}; each layer needs 'used' and 'free'")
        layers[name] = {k: float(v) for k, v in stats.items()}
    used = [s["used"] for s in layers.values()]
    free = [s["free"] for s in layers.values()]
    return {"layers": layers, "mean_used": _mean(used) if used else None, "mean_free": _mean(free) if free else None,
            "num_layers": len(layers)}
