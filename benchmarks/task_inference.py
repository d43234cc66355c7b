"""Task-id inference on a trained checkpoint: which task does each input belong to, and what does guessing cost?

The test sets of every task in a training config are mixed; each inference method (exssnet_nlp.serving:
`router` nearest task centroid, `router_class` nearest class centroid, `router_knn` KNN vote, `entropy` SupSup's
normalised-entropy criterion) picks a task per input, then that task's head classifies it. Reported per method:
- task-id accuracy and the confusion matrix (row: true task, column: inferred task, counts);
- end accuracy with the inferred task, against the same model given the true task (`true_task`). Strict: the task
  and the label must both be right. By label name: the predicted label's name equals the true one whatever head
  gave it (a Yelp review answered by the Amazon head with the right star count counts);
- cost per input: encoder forwards (rows through `model.encode`, per input) and wall milliseconds per input.

Routers: a task's router is the one in its checkpoint file when there is one; otherwise it is fitted here exactly
as the trainer does when a task finishes (the run's own training sample from the trainer state in the checkpoint,
`ROUTER_SAMPLES_PER_CLASS` rows per class, seed of the run). For a method that isolates tasks the routing view is
fixed, so fitting it afterwards gives the router the trainer would have stored.

    python benchmarks/task_inference.py --checkpoint runs/serve_webnlp/checkpoint --config configs/webnlp_local.yaml \
        --test-per-class 40 --name webnlp          # -> benchmarks/results/task_inference_webnlp.json
    python benchmarks/task_inference.py ... --routing-view first_task --methods router router_class router_knn \
        --name demo_first_task_view                # ablation: routers on the first task's view instead
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from exssnet_nlp import load_pretrained, load_training_config
from exssnet_nlp.checkpoint import read_checkpoint_config
from exssnet_nlp.data import load_task, resolve_task_spec, tokenize_dataset
from exssnet_nlp.io import write_json_atomic
from exssnet_nlp.serving import INFERENCE_METHODS, ROUTER_SAMPLES_PER_CLASS, first_task_embedding, fit_router, sample_per_class
from exssnet_nlp.serving.predict import task_max_length

ROOT = Path(__file__).resolve().parents[1]


def _count_forwards(model: Any) -> dict[str, int]:
    """Count rows through the encoder: every forward, routing embeddings included, runs `model.encoder`."""
    counter = {"rows": 0}

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        counter["rows"] += int(ids.shape[0])

    model.encoder.register_forward_pre_hook(count, with_kwargs=True)
    return counter


def _fit_missing_routers(model: Any, specs: dict[str, Any], train_args: dict[str, Any], refit: bool) -> dict[str, str]:
    sources = {}
    for name in model.tasks:
        if name in model.routers and not refit:
            sources[name] = "checkpoint"
            continue
        data = load_task(specs[name], train_samples_per_class=train_args.get("train_samples_per_class"),
                         eval_samples_per_class=1, validation_samples_per_class=train_args.get("validation_samples_per_class", 0),
                         seed=train_args.get("seed", 0))
        train = tokenize_dataset(data.train, model.tokenizer, train_args.get("max_length") or task_max_length(model, name))
        rows = sample_per_class(train["labels"], ROUTER_SAMPLES_PER_CLASS, seed=train_args.get("seed", 0))
        loader = DataLoader(train.select(rows), batch_size=64, collate_fn=DataCollatorWithPadding(model.tokenizer))
        fit_router(model, name, loader)
        sources[name] = f"fitted by the benchmark ({len(rows)} training rows, the trainer's sample)"
    return sources


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_pretrained(args.checkpoint)
    stored = read_checkpoint_config(args.checkpoint)
    train_args = ((stored.get("trainer_state") or {}).get("args")) or {}
    _, task_list = load_training_config(args.config, [])
    specs = {}
    for item in task_list:
        spec = resolve_task_spec({"name": item} if isinstance(item, str) else item)
        specs[spec.name] = spec
    missing = [t for t in model.tasks if t not in specs]
    if missing:
        raise SystemExit(f"{args.config} has no data for task(s) {missing}")
    if args.routing_view == "first_task":  # the ablation: the base class's default view instead of the method's
        model.routing_embedding = lambda *a, **k: first_task_embedding(model, *a, **k)
    router_sources = _fit_missing_routers(model, specs, train_args, refit=args.routing_view != "method")

    texts, true_task, true_label = [], [], []
    for name in model.tasks:
        data = load_task(specs[name], eval_samples_per_class=args.test_per_class, validation_samples_per_class=0,
                         seed=args.seed)
        names = model.task_info(name).label_names
        texts += list(data.test["text"])
        true_task += [name] * len(data.test)
        true_label += [names[int(i)] for i in data.test["label"]]
    n = len(texts)
    counter = _count_forwards(model)
    model.predict(texts[: args.batch_size], task=model.tasks[0], batch_size=args.batch_size)  # warm-up
    results: dict[str, Any] = {}
    for method in ["true_task", *(args.methods or INFERENCE_METHODS)]:
        counter["rows"] = 0
        start = time.perf_counter()
        if method == "true_task":
            rows = []
            for name in model.tasks:  # the oracle: each input under its own task
                picked = [i for i, t in enumerate(true_task) if t == name]
                rows += model.predict([texts[i] for i in picked], task=name, batch_size=args.batch_size)
        else:
            rows = model.predict(texts, inference=method, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        confusion = {t: {u: 0 for u in model.tasks} for t in model.tasks}
        for row, task in zip(rows, true_task, strict=True):
            confusion[task][row["task"]] += 1
        strict = [r["task"] == t and r["label"] == lab for r, t, lab in zip(rows, true_task, true_label, strict=True)]
        by_name = [r["label"] == lab for r, lab in zip(rows, true_label, strict=True)]
        per_task = {}
        for name in model.tasks:
            idx = [i for i, t in enumerate(true_task) if t == name]
            per_task[name] = {"task_id_accuracy": sum(rows[i]["task"] == name for i in idx) / len(idx),
                              "end_accuracy": sum(strict[i] for i in idx) / len(idx),
                              "end_accuracy_by_label_name": sum(by_name[i] for i in idx) / len(idx)}
        results[method] = {
            "task_id_accuracy": sum(r["task"] == t for r, t in zip(rows, true_task, strict=True)) / n,
            "end_accuracy": sum(strict) / n,
            "end_accuracy_by_label_name": sum(by_name) / n,
            "forwards_per_input": counter["rows"] / n,
            "ms_per_input": 1000 * seconds / n,
            "confusion": confusion,
            "per_task": per_task,
        }
        print(f"{method:13s} task-id {results[method]['task_id_accuracy']:.4f}  end {results[method]['end_accuracy']:.4f} "
              f"(by label name {results[method]['end_accuracy_by_label_name']:.4f})  forwards/input "
              f"{results[method]['forwards_per_input']:.2f}  ms/input {results[method]['ms_per_input']:.2f}", flush=True)
    return {
        "checkpoint": str(args.checkpoint), "config": str(args.config), "method": model.method, "tasks": model.tasks,
        "inputs": n, "test_per_class": args.test_per_class, "batch_size": args.batch_size, "threads": args.threads,
        "max_length": {t: task_max_length(model, t) for t in model.tasks},
        "router_samples_per_class": ROUTER_SAMPLES_PER_CLASS, "router_sources": router_sources,
        "routing_view": args.routing_view,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    tasks = report["tasks"]
    lines = ["| inference | task-id acc | end acc (strict) | end acc (label name) | forwards/input | ms/input |",
             "|---|---|---|---|---|---|"]
    for method, r in report["results"].items():
        lines.append(f"| {method} | {100 * r['task_id_accuracy']:.2f} | {100 * r['end_accuracy']:.2f} | "
                     f"{100 * r['end_accuracy_by_label_name']:.2f} | {r['forwards_per_input']:.2f} | {r['ms_per_input']:.2f} |")
    for method, r in report["results"].items():
        if method == "true_task":
            continue
        lines += ["", f"Confusion, {method} (row: true task, column: inferred task, counts)", "",
                  "| true \\ inferred | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        lines += [f"| {t} | " + " | ".join(str(r["confusion"][t][u]) for u in tasks) + " |" for t in tasks]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", required=True, help="The training YAML whose task list gives the data.")
    parser.add_argument("--test-per-class", type=int, default=None, help="Test rows per class (default: all).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="*", default=None, choices=INFERENCE_METHODS, help="Default: all.")
    parser.add_argument("--routing-view", default="method", choices=["method", "first_task"],
                        help="The routers' view: the method's routing_embedding (default), or the first task's view "
                             "(the base-class default; an ablation, routers refitted on it).")
    parser.add_argument("--name", required=True, help="Result file: benchmarks/results/task_inference_<name>.json")
    args = parser.parse_args()
    report = run(args)
    report["markdown"] = markdown(report)
    out = ROOT / "benchmarks" / "results" / f"task_inference_{args.name}.json"
    write_json_atomic(out, report)
    print(report["markdown"])
    print(f"-> {out}")


if __name__ == "__main__":
    main()
