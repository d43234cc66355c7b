"""Pure tensor functions on masks: exact top-k selection, straight-through estimator, bit packing."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

TOPK_CANDIDATES = ("topk", "kthvalue", "sort")
# (numel, k, device type, dtype) -> fastest candidate, measured once per process.
_AUTO_CHOICE: dict[tuple[int, int, str, torch.dtype], str] = {}


def num_kept(numel: int, density: float) -> int:
    """Weights a mask keeps: round(density * numel), at least 1."""
    return max(1, min(numel, int(round(density * numel))))


def _threshold_topk(flat: torch.Tensor, k: int) -> torch.Tensor:
    return flat.topk(k, sorted=False).values.min()


def _threshold_kthvalue(flat: torch.Tensor, k: int) -> torch.Tensor:
    return flat.kthvalue(flat.numel() - k + 1).values


def _threshold_sort(flat: torch.Tensor, k: int) -> torch.Tensor:
    return flat.sort().values[flat.numel() - k]


_THRESHOLDS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "topk": _threshold_topk,
    "kthvalue": _threshold_kthvalue,
    "sort": _threshold_sort,
}


def _time_candidate(name: str, flat: torch.Tensor, k: int, repeats: int = 5) -> float:
    """Median of `repeats` timed calls after two warm-ups: one noisy call must not decide for the whole run."""
    fn = _THRESHOLDS[name]
    for _ in range(2):
        fn(flat, k)
    times = []
    for _ in range(repeats):
        if flat.is_cuda:
            torch.cuda.synchronize(flat.device)
        start = time.perf_counter()
        fn(flat, k)
        if flat.is_cuda:
            torch.cuda.synchronize(flat.device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def choose_topk_method(flat: torch.Tensor, k: int) -> str:
    """The fastest exact top-k threshold method for this size on this device (timed once, cached)."""
    key = (flat.numel(), k, flat.device.type, flat.dtype)
    if key not in _AUTO_CHOICE:
        with torch.no_grad():
            probe = torch.rand_like(flat)
            timings = {name: _time_candidate(name, probe, k) for name in TOPK_CANDIDATES}
        _AUTO_CHOICE[key] = min(timings, key=timings.get)
    return _AUTO_CHOICE[key]


def topk_mask(scores: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    """Bool mask of exactly `k` entries with the largest |scores|.

    Ties at the threshold go to the lowest flat index, so every method returns the same mask.
    """
    numel = scores.numel()
    if not 0 < k <= numel:
        raise ValueError(f"k={k} must be in [1, {numel}].")
    with torch.no_grad():
        flat = scores.detach().abs().flatten()
        if k == numel:
            return torch.ones_like(scores, dtype=torch.bool)
        if method == "auto":
            method = choose_topk_method(flat, k)
        if method not in _THRESHOLDS:
            raise ValueError(f"topk method {method!r} is not valid; allowed: auto, {', '.join(TOPK_CANDIDATES)}.")
        threshold = _THRESHOLDS[method](flat, k)
        above = flat > threshold
        at = flat == threshold
        # No host sync: the ties to keep are the first (k - #above) of them in index order.
        need = k - above.sum()
        keep_at = at & (at.cumsum(0) <= need)
        return (above | keep_at).view_as(scores)


class StraightThroughMask(torch.autograd.Function):
    """Forward: the top-k mask of |scores| as a float tensor. Backward: identity to the scores."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int, method: str) -> torch.Tensor:  # type: ignore[override]
        return topk_mask(scores, k, method).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        return grad_output, None, None


def straight_through_mask(scores: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    return StraightThroughMask.apply(scores, k, method)


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into uint8, 8 entries per byte (row-major, most significant bit first)."""
    flat = mask.detach().flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = _BIT_WEIGHTS.to(flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_bits`: the bool tensor of `shape`."""
    numel = 1
    for size in shape:
        numel *= int(size)
    if packed.dtype != torch.uint8 or packed.numel() != (numel + 7) // 8:
        raise ValueError(
            f"packed mask has {packed.numel()} {packed.dtype} entries; a mask of shape {tuple(shape)} needs "
            f"{(numel + 7) // 8} uint8 bytes. The checkpoint or buffer is corrupt or belongs to another model."
        )
    weights = _BIT_WEIGHTS.to(packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    return bits.flatten()[:numel].view(*shape)


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a|: the fraction of mask `a` that mask `b` also holds."""
    total = int(a.sum())
    return float((a & b).sum()) / total if total else 0.0
