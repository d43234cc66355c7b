"""100 tasks on one encoder: memory per task, time per task, and every sampled old task still bit-exact.

    python benchmarks/many_tasks.py --tasks 100 --output benchmarks/results/many_tasks_cpu.json

Each task is a synthetic 2- or 3-class problem over token ids (class-dependent tokens), learned with a
few mask-phase and weight-phase steps on a small random BERT. After each sampled task its logits on a
fixed probe batch are recorded; at the end every sampled task is re-run and compared with torch.equal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch
from transformers import BertConfig, BertModel

from exssnet_nlp import ExSSNetConfig, ExSSNetModel


def task_batch(task: int, num_labels: int, batch: int, length: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed * 7919 + task)
    labels = torch.randint(0, num_labels, (batch,), generator=g)
    ids = torch.randint(10, vocab, (batch, length), generator=g)
    # Class c of task t puts token (t * 3 + c) % vocab in half the positions: learnable, task-specific.
    marker = (10 + (task * 3 + labels) % (vocab - 10)).unsqueeze(1).expand(-1, length // 2)
    ids[:, : length // 2] = marker
    return ids, torch.ones_like(ids), labels


def held_bytes(model: ExSSNetModel) -> dict[str, int]:
    masks = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if ".task_mask_" in n or n.startswith("task_mask_"))
    heads = sum(t.numel() * t.element_size() for t in model.heads.state_dict().values())
    return {"masks": masks, "heads": heads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--method", default="exssnet")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per phase")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--sample-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/many_tasks_cpu.json")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    vocab = 400
    encoder = BertModel(BertConfig(vocab_size=vocab, hidden_size=args.hidden, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=4 * args.hidden, max_position_embeddings=64))
    model = ExSSNetModel.from_encoder(encoder, ExSSNetConfig(density=args.density, method=args.method, pooling="mean"))
    masked = sum(layer.weight.numel() for layer in model.supermask_layers().values())
    kept = sum(layer.k for layer in model.supermask_layers().values())
    probe = {}
    rows = []
    for t in range(args.tasks):
        name, num_labels = f"task_{t:03d}", 2 + t % 2
        ids, mask, labels = task_batch(t, num_labels, 32, 16, vocab, args.seed)
        start = time.perf_counter()
        model.add_task(name, num_labels)
        for phase in (model.begin_mask_phase, model.begin_weight_phase) if args.method != "supsup" else (model.begin_mask_phase,):
            phase()
            opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.01)
            model.train()
            for _ in range(args.steps):
                model(ids, mask, labels=labels).loss.backward()
                opt.step()
                opt.zero_grad()
        model.finish_task()
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            acc = float((model(ids, mask, task=name).logits.argmax(-1) == labels).float().mean())
            if t % args.sample_every == 0:
                probe[name] = model(ids, mask, task=name).logits.clone()
        held = held_bytes(model)
        free = sum(c["free"] for c in model.capacity().values()) / len(model.capacity())
        rows.append({"task": t, "seconds": seconds, "train_accuracy": acc, "mask_bytes": held["masks"], "head_bytes": held["heads"],
                     "mean_free_capacity": free, "mask_bits_per_masked_weight_per_task": 8 * held["masks"] / ((t + 1) * kept)})
        if t % 10 == 0 or t == args.tasks - 1:
            print(f"task {t:3d}: {seconds:.3f}s, train acc {acc:.2f}, masks {held['masks']:,d} B, free capacity {free:.3f}", flush=True)

    model.eval()
    unchanged = {}
    with torch.no_grad():
        for name, expected in probe.items():
            t = int(name.split("_")[1])
            ids, mask, _ = task_batch(t, 2 + t % 2, 32, 16, vocab, args.seed)
            unchanged[name] = bool(torch.equal(model(ids, mask, task=name).logits, expected))
    per_task_mask = rows[-1]["mask_bytes"] / args.tasks
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
        "settings": vars(args),
        "masked_weights_per_task_layerwise_total": masked,
        "kept_weights_per_task": kept,
        "mask_bytes_per_task": per_task_mask,
        "mask_bits_per_layer_weight_per_task": 8 * per_task_mask / masked,
        "mask_bits_per_masked_weight_per_task": 8 * per_task_mask / kept,
        "mean_seconds_per_task": sum(r["seconds"] for r in rows) / len(rows),
        "seconds_first_10": sum(r["seconds"] for r in rows[:10]) / min(10, len(rows)),
        "seconds_last_10": sum(r["seconds"] for r in rows[-10:]) / min(10, len(rows)),
        "sampled_tasks_checked": len(unchanged),
        "all_sampled_tasks_unchanged": all(unchanged.values()),
        "unchanged": unchanged,
        "per_task": rows,
    }
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(args.output) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.output)
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_task", "unchanged")}, indent=2))


if __name__ == "__main__":
    main()
