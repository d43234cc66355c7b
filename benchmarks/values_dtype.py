"""What keeping trained values in float16 or bfloat16 (`values_dtype`) costs in accuracy and saves in bytes.

Post hoc, on the grid's checkpoints of the methods that store trained per-task values (exssnet's and wsn's
weights, lora's adapters) and kept them exact (`values_dtype` null; the default before it became float16):
each is evaluated as run (float32 values; this must reproduce the
run's last accuracy row), then saved again with `values_dtype` set, which rounds every trained value, and the
re-loaded copy is evaluated on the same test rows. In a run with `values_dtype` set, each task's values are
rounded when it finishes, and later tasks train on top of the rounded weights; here later tasks trained on the
unrounded ones, so this measures the rounding alone, with no chance for later training to adapt to it.

    python benchmarks/values_dtype.py --threads 1          # every such cell of results/grid_cpu with a checkpoint
    python benchmarks/values_dtype.py --report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (sets the offline environment and the import path)
import grid  # noqa: E402

ROOT = accuracy.ROOT
DTYPES = ("float16", "bfloat16")


def bytes_per_task(model: Any) -> int:
    """Stored bytes per task without the task-inference routers, as the grid reports them."""
    sizes = [model.task_storage_bytes(t) for t in model.finished_tasks]
    return sum(s["total"] - s.get("router", 0) for s in sizes) // len(sizes)


def measure_cell(run: dict[str, Any], config: str, work: Path) -> dict[str, Any]:
    from exssnet_nlp import load_pretrained
    from exssnet_nlp.checkpoint import read_checkpoint_config, save_model
    from exssnet_nlp.training.evaluation import evaluate_checkpoint

    checkpoint = ROOT / run["output_dir"] / "checkpoint"
    tasks = run["tasks"]
    out: dict[str, Any] = {"as_run": dict(zip(tasks, run["accuracy_matrix"][-1], strict=True))}
    start = time.perf_counter()
    out["float32"] = evaluate_checkpoint(str(checkpoint), config)
    for dtype in DTYPES:
        model = load_pretrained(str(checkpoint))  # fresh each time: rounding is in place
        out.setdefault("float32_bytes_per_task", bytes_per_task(model))
        model.keep_values_in(dtype)
        # With the run's trainer state: evaluation then takes the run's max_length, seed and sample caps.
        copy = save_model(model, work / f"{Path(run['output_dir']).parent.name}_{dtype}",
                          trainer_state=read_checkpoint_config(str(checkpoint))["trainer_state"])
        out[dtype] = evaluate_checkpoint(str(copy), config)
        out[f"{dtype}_bytes_per_task"] = bytes_per_task(model)
    out["seconds"] = time.perf_counter() - start
    return out


def average(accuracies: dict[str, float]) -> float:
    return statistics.fmean(accuracies.values())


def report(data: dict[str, Any]) -> str:
    lines = ["| cell | avg acc % as run | float32 re-evaluated | float16 | bfloat16 | MB per task float32 | float16 | bfloat16 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by_row: dict[str, list[dict[str, Any]]] = {}
    for name, cell in sorted(data["cells"].items()):
        # Cells measured before lora was included are all exssnet's.
        by_row.setdefault(accuracy.run_key(cell.get("method", "exssnet"), cell["density"]), []).append(cell)
        lines.append(f"| {name} | {100 * average(cell['as_run']):.2f} | {100 * average(cell['float32']):.2f} | "
                     f"{100 * average(cell['float16']):.2f} | {100 * average(cell['bfloat16']):.2f} | "
                     f"{cell['float32_bytes_per_task'] / 1e6:.3f} | {cell['float16_bytes_per_task'] / 1e6:.3f} | "
                     f"{cell['bfloat16_bytes_per_task'] / 1e6:.3f} |")
    for key, cells in sorted(by_row.items()):
        for dtype in DTYPES:
            deltas = [100 * (average(c[dtype]) - average(c["float32"])) for c in cells]
            lines.append(f"\n{key}, {dtype} - float32 over {len(cells)} seeds: mean {statistics.fmean(deltas):+.3f} "
                         f"points (per seed {', '.join(f'{d:+.3f}' for d in deltas)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--results-dir", default="benchmarks/results/grid_cpu", help="the grid cells to read")
    parser.add_argument("--config", default="configs/webnlp_local.yaml", help="the task sequence the cells ran on (YAML)")
    parser.add_argument("--output", default="benchmarks/results/values_dtype_cpu.json")
    parser.add_argument("--work-dir", default="runs/values_dtype", help="where the rounded copies are saved")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 beside other jobs)")
    parser.add_argument("--report", action="store_true", help="print the table of --output and exit")
    opts = parser.parse_args(argv)
    output = Path(opts.output)
    if opts.report:
        print(report(json.loads(output.read_text())))
        return 0
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    data = json.loads(output.read_text()) if output.exists() else {"cells": {}}
    for path in sorted(Path(opts.results_dir).glob("*.json")):
        run = json.loads(path.read_text())
        if path.name == "summary.json" or not grid.kept_exact_values(run):
            continue
        if path.stem in data["cells"] or run.get("variant") or not (ROOT / run["output_dir"] / "checkpoint").is_dir():
            continue
        print(f"{path.stem}: measuring", flush=True)
        data["cells"][path.stem] = {"method": run["method"], "density": run["density"], "seed": run["seed"],
                                    "run_commit": run.get("commit"),
                                    "measured_commit": grid._commit(),
                                    **measure_cell(run, opts.config, Path(opts.work_dir))}
        data.update(machine=accuracy.machine_info(), commit=grid._commit())
        accuracy.write_json(output, data)  # after every cell: an interrupted measurement keeps what it has
    print(report(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
