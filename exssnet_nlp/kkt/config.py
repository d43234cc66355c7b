"""`KKTConfig` and `KKTResult`: how KNN knowledge transfer samples, scores and transfers, and what it did."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

KKT_MODES = ("best", "all", "off")
KKT_POOLINGS = ("mean", "cls")
MAX_DEFAULT_K = 25
# Fewer examples than this cannot give a held-out accuracy worth comparing: KKT is skipped.
MIN_SCORABLE = 4
# Auto margin (`min_improvement=None`): this many binomial standard errors of chance accuracy on the held-out split.
AUTO_MARGIN_STD_ERRORS = 2.5


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass
class KKTConfig:
    """How KKT samples, scores and transfers.

    Args:
        mode: `best` (start from the one earlier task whose mask gives the highest KNN accuracy, if it
            beats chance by the margin), `all` (a weighted vote of every such task's mask, see
            `apply_transfer`) or `off` (do nothing, cost nothing).
        k: Neighbours of the KNN classifier. `None`: about sqrt(#fitting examples), made odd (no tied
            votes between two classes) and clipped to [1, 25]: the classic rule of thumb, which grows
            with the sample but stays local (e.g. 100 sampled -> 70 fitting -> k=7; 1000 -> k=25).
        sample_fraction: Fraction of the training set to sample (0 < f <= 1). 0.1 is enough: the
            score only needs to rank a handful of earlier tasks, and the cost is one forward pass per
            sampled example per earlier task.
        max_samples: Cap on the sample size (1000: a held-out split of 300, whose accuracy has a
            standard error of about 3 points, is plenty to rank tasks; more only costs time).
        min_samples: Floor on the sample size, or every example when there are fewer (100: with fewer,
            a 30% held-out split has under 30 examples and its accuracy is too noisy to rank tasks).
        pooling: How a sequence's last hidden state becomes one vector: `mean` over real tokens
            (default: informative even under masks trained with another task's head) or `cls`.
        test_size: Held-out fraction of the sample on which the KNN is scored (0 < t < 1).
        batch_size: Examples per forward pass when embedding.
        min_improvement: How far above chance a KNN accuracy must be for its task to count as a
            source. `None` (default): 2.5 binomial standard errors of chance accuracy on the held-out
            split, 2.5 * sqrt(p (1 - p) / n_test) with p = max(chance, baseline). With labels the
            embeddings know nothing about, a held-out accuracy exceeds it about 0.6% of the time per
            earlier task (measured: 0.6% of 960 random-label runs; 1.5% at 2 standard errors), so such
            a task gets no (random) source even after ten earlier tasks in ~94% of cases, while a real
            match clears it easily (margin ~0.07 for 2 classes at n_test = 300, ~0.23 at n_test = 30).
            A number: that fixed margin (0.0 = strictly beat chance).
        seed: Seeds the sample, the held-out split and the tie-breaks of the initial mask.
    """

    mode: str = field(default="best", metadata={
        "help": "best (start from the earlier task whose mask scores best, if above chance) | all (a weighted vote of "
                "every such mask) | off."})
    k: int | None = field(default=None, metadata={"help": "KNN neighbours; none: about sqrt(fitting examples), odd, in [1, 25]."})
    sample_fraction: float = field(default=0.1, metadata={"help": "Fraction of the new task's training set sampled (0, 1]."})
    max_samples: int = field(default=1000, metadata={"help": "Cap on the sample size."})
    min_samples: int = field(default=100, metadata={"help": "Floor on the sample size (or every example when fewer)."})
    pooling: str = field(default="mean", metadata={"help": "Sentence embedding for the KNN: mean (over real tokens) | cls."})
    test_size: float = field(default=0.3, metadata={"help": "Held-out fraction of the sample the KNN is scored on (0, 1)."})
    batch_size: int = field(default=64, metadata={"help": "Examples per forward pass when embedding."})
    min_improvement: float | None = field(default=None, metadata={
        "help": "Margin above chance a KNN accuracy needs; none: 2.5 binomial standard errors of chance on the held-out split."})
    seed: int = field(default=0, metadata={"help": "Seeds the sample, the held-out split and tie-breaks (the run's seed)."})

    def __post_init__(self) -> None:
        if self.mode not in KKT_MODES:
            raise ValueError(f"KKTConfig.mode={self.mode!r} is not valid; allowed values: {', '.join(KKT_MODES)}.")
        if self.pooling not in KKT_POOLINGS:
            raise ValueError(f"KKTConfig.pooling={self.pooling!r} is not valid; allowed values: {', '.join(KKT_POOLINGS)}.")
        if self.k is not None and not (_is_int(self.k) and self.k >= 1):
            raise ValueError(f"KKTConfig.k={self.k!r} must be None (automatic) or an int >= 1.")
        if not (_is_number(self.sample_fraction) and 0.0 < self.sample_fraction <= 1.0):
            raise ValueError(f"KKTConfig.sample_fraction={self.sample_fraction!r} must be a number with 0 < sample_fraction <= 1.")
        for name in ("max_samples", "min_samples", "batch_size"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 1):
                raise ValueError(f"KKTConfig.{name}={value!r} must be an int >= 1.")
        if self.min_samples > self.max_samples:
            raise ValueError(f"KKTConfig.min_samples={self.min_samples!r} must not exceed max_samples={self.max_samples!r}.")
        if not (_is_number(self.test_size) and 0.0 < self.test_size < 1.0):
            raise ValueError(f"KKTConfig.test_size={self.test_size!r} must be a number with 0 < test_size < 1.")
        if self.min_improvement is not None and not (_is_number(self.min_improvement) and 0.0 <= self.min_improvement < 1.0):
            raise ValueError(f"KKTConfig.min_improvement={self.min_improvement!r} must be None (automatic) or a number in [0, 1).")
        if not _is_int(self.seed):
            raise ValueError(f"KKTConfig.seed={self.seed!r} must be an int.")
        self.k = None if self.k is None else int(self.k)
        self.sample_fraction = float(self.sample_fraction)
        self.test_size = float(self.test_size)
        self.min_improvement = None if self.min_improvement is None else float(self.min_improvement)

    def resolved_k(self, num_fit: int) -> int:
        """Neighbours used when `num_fit` examples are fitted: `k`, or the sqrt rule; never more than `num_fit`."""
        if self.k is not None:
            k = self.k
        else:
            k = min(MAX_DEFAULT_K, max(1, round(math.sqrt(num_fit))))
            if k % 2 == 0:
                k -= 1  # odd: two classes can't tie
        return max(1, min(k, num_fit))

    def sample_size(self, num_examples: int) -> int:
        """Examples sampled from `num_examples`: fraction, raised to `min_samples`, capped at `max_samples` and the data."""
        wanted = max(round(self.sample_fraction * num_examples), self.min_samples)
        return max(0, min(wanted, self.max_samples, num_examples))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KKTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown KKTConfig field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**dict(data))


@dataclass
class KKTResult:
    """What KKT measured and did for one new task.

    `knn_accuracy` has one entry per finished task that was scored (empty when KKT was off, had no
    earlier task or too little data). `chance` is 1 / num_labels; `baseline` is the held-out accuracy
    of always answering the fitted split's most common class (above `chance` when classes are
    imbalanced); `threshold` = max(chance, baseline) + margin is what a source's accuracy must exceed.
    `weights[i]` is sources[i]'s accuracy minus max(chance, baseline): its vote in mode `all`.
    """

    task: str
    mode: str
    knn_accuracy: dict[str, float] = field(default_factory=dict)
    chance: float = 0.0
    baseline: float = 0.0
    threshold: float = 0.0
    sources: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    k: int = 0
    num_samples: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- sampling -------------------------------------------------------------------------------------
