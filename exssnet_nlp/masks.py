"""Pure tensor functions on masks: exact top-k selection, straight-through estimator, bit packing, compression."""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable, Iterable

import torch

TOPK_CANDIDATES = ("topk", "kthvalue", "sort")
# (numel, k, device type, dtype) -> fastest candidate, measured once per process.
_AUTO_CHOICE: dict[tuple[int, int, str, torch.dtype], str] = {}


def num_kept(numel: int, density: float) -> int:
    """Weights a mask keeps: round(density * numel), at least 1."""
    return max(1, min(numel, int(round(density * numel))))


# Each takes |scores| as rows [R, n] and returns every row's k-th largest value, shape [R, 1].
def _threshold_topk(rows: torch.Tensor, k: int) -> torch.Tensor:
    return rows.topk(k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values


def _threshold_kthvalue(rows: torch.Tensor, k: int) -> torch.Tensor:
    return rows.kthvalue(rows.shape[1] - k + 1, dim=1, keepdim=True).values


def _threshold_sort(rows: torch.Tensor, k: int) -> torch.Tensor:
    n = rows.shape[1]
    return rows.sort(dim=1).values[:, n - k : n - k + 1]


_THRESHOLDS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "topk": _threshold_topk,
    "kthvalue": _threshold_kthvalue,
    "sort": _threshold_sort,
}


def _time_candidate(name: str, rows: torch.Tensor, k: int, repeats: int = 5) -> float:
    """Median of `repeats` timed calls after two warm-ups: one noisy call must not decide for the whole run."""
    fn = _THRESHOLDS[name]
    for _ in range(2):
        fn(rows, k)
    times = []
    for _ in range(repeats):
        if rows.is_cuda:
            torch.cuda.synchronize(rows.device)
        start = time.perf_counter()
        fn(rows, k)
        if rows.is_cuda:
            torch.cuda.synchronize(rows.device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def choose_topk_method(rows: torch.Tensor, k: int) -> str:
    """The fastest exact top-k threshold method for rows of this size on this device (timed once, cached)."""
    rows = rows if rows.dim() == 2 else rows.reshape(1, -1)
    key = (rows.shape[0], rows.shape[1], k, rows.device.type, rows.dtype)
    if key not in _AUTO_CHOICE:
        with torch.no_grad():
            # Its own generator: drawing from the global RNG here would shift dropout and data order after a
            # resume (the first timing of a shape happens at another point of the run), breaking resume equality.
            probe = torch.rand(rows.shape, generator=torch.Generator().manual_seed(0), dtype=rows.dtype).to(rows.device)
            timings = {name: _time_candidate(name, probe, k) for name in TOPK_CANDIDATES}
        _AUTO_CHOICE[key] = min(timings, key=timings.get)
    return _AUTO_CHOICE[key]


def topk_mask_rows(magnitudes: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    """Bool mask per row [R, n] of exactly `k` entries with the largest values (rows hold |scores|).

    Ties at the threshold go to the lowest index, so every method returns the same mask. One call for all
    same-shaped layers of a model is one launch sequence instead of one per layer (what bounds a GPU step).
    """
    n = magnitudes.shape[1]
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be in [1, {n}].")
    with torch.no_grad():
        if k == n:
            return torch.ones_like(magnitudes, dtype=torch.bool)
        if method == "auto":
            method = choose_topk_method(magnitudes, k)
        if method not in _THRESHOLDS:
            raise ValueError(f"topk method {method!r} is not valid; allowed: auto, {', '.join(TOPK_CANDIDATES)}.")
        threshold = _THRESHOLDS[method](magnitudes, k)
        above = magnitudes > threshold
        at = magnitudes == threshold
        # No host sync: the ties to keep are the first (k - #above) of them in index order.
        need = k - above.sum(dim=1, keepdim=True)
        return above | (at & (at.cumsum(dim=1) <= need))


def topk_mask(scores: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    """Bool mask of exactly `k` entries of `scores` with the largest |scores| (ties: lowest flat index)."""
    return topk_mask_rows(scores.detach().abs().reshape(1, -1), k, method).view_as(scores)


class MaskedWeight(torch.autograd.Function):
    """`weight * mask` whose gradient goes straight through the mask to the scores (SupSup's estimator).

    d loss / d scores = d loss / d (weight * mask) * weight; the weight gets no gradient.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        ctx.scores_dtype = scores.dtype
        return weight * mask

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return None, (grad_output * weight).to(ctx.scores_dtype), None


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def packed_size(numel: int) -> int:
    """Bytes `pack_bits` takes for a mask of `numel` entries."""
    return (numel + 7) // 8


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
    if packed.dtype != torch.uint8 or packed.numel() != packed_size(numel):
        raise ValueError(
            f"packed mask has {packed.numel()} {packed.dtype} entries; a mask of shape {tuple(shape)} needs "
            f"{packed_size(numel)} uint8 bytes. The checkpoint or buffer is corrupt or belongs to another model."
        )
    weights = _BIT_WEIGHTS.to(packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    return bits.flatten()[:numel].view(*shape)


# Level 6: within 2% of level 9's size at a fifth of its time (a MiniLM FFN mask at density 0.1: 0.546 vs 0.537 of
# the packed bytes); level 1 stores 5% more.
DEFLATE_LEVEL = 6


def deflate_packed(packed: torch.Tensor, reference: torch.Tensor | None = None, level: int = DEFLATE_LEVEL) -> torch.Tensor:
    """The smaller of packed mask bits and their deflate (zlib) stream, as a 1-d uint8 tensor on the CPU.

    Lossless. A mask keeping a fraction p of its weights carries about H(p) bits per weight (0.47 at p=0.1),
    so the stream is about half the packed bits. With `reference` (packed bits of a mask the reader already
    has), the bits coded are `packed XOR reference`: a mask that mostly repeats the reference costs little.
    A stream is stored only when strictly shorter, so its length tells `inflate_packed` which it holds.
    """
    raw = packed.detach().cpu().contiguous().reshape(-1)
    if raw.dtype != torch.uint8:
        raise ValueError(f"packed mask bits must be uint8, got {raw.dtype}.")
    if reference is not None:
        raw = torch.bitwise_xor(raw, reference.detach().cpu().reshape(-1))
    stream = zlib.compress(raw.numpy().tobytes(), level)
    if len(stream) >= raw.numel():
        return raw
    return torch.frombuffer(bytearray(stream), dtype=torch.uint8)


def inflate_packed(data: torch.Tensor, nbytes: int, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of `deflate_packed` (with the same `reference`): the `nbytes` packed mask bytes."""
    out = _inflate(data, nbytes)
    if reference is None:
        return out
    if reference.dtype != torch.uint8 or reference.numel() != nbytes:
        raise ValueError(f"the reference mask must be {nbytes} packed uint8 bytes, got {reference.numel()} {reference.dtype}.")
    return torch.bitwise_xor(out.to(reference.device), reference.reshape(-1))


def _inflate(data: torch.Tensor, nbytes: int) -> torch.Tensor:
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() > nbytes:
        raise ValueError(f"a stored mask must be at most {nbytes} uint8 bytes (packed bits, or their deflate stream); "
                         f"got {tuple(data.shape)} {data.dtype}. The checkpoint is corrupt or belongs to another model.")
    if data.numel() == nbytes:
        return data
    inflater = zlib.decompressobj()
    try:
        # Bounded: a corrupt stream can never expand past the mask it claims to be.
        out = inflater.decompress(data.cpu().numpy().tobytes(), nbytes + 1)
    except zlib.error as err:
        raise ValueError(f"a stored mask is not a valid deflate stream ({err}); the checkpoint is corrupt.") from None
    if len(out) > nbytes:
        problem = f"inflates to more than the {nbytes} bytes its layer needs"
    elif not inflater.eof:
        problem = f"is a deflate stream cut short after {len(out)} of {nbytes} bytes"
    elif len(out) < nbytes:
        problem = f"inflates to {len(out)} bytes, not the {nbytes} its layer needs"
    elif inflater.unused_data:
        problem = f"has {len(inflater.unused_data)} bytes after its deflate stream"
    else:
        return torch.frombuffer(bytearray(out), dtype=torch.uint8)
    raise ValueError(f"a stored mask {problem}; the checkpoint is corrupt or belongs to another model.")


def masks_digest(packed: Iterable[tuple[str, torch.Tensor]], previous: str = "") -> str:
    """sha256 (hex) of named packed masks, chained after `previous` (the digest of the masks before them)."""
    digest = hashlib.sha256(previous.encode())
    for name, bits in packed:
        digest.update(name.encode() + b"\0" + bits.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a|: the fraction of mask `a` that mask `b` also holds."""
    total = int(a.sum())
    return float((a & b).sum()) / total if total else 0.0
