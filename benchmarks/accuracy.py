"""Accuracy of every continual method on the WebNLP sequence, written as one JSON and printed as tables.

One command runs the grid: every method in the registry (`exssnet_nlp.method_names()`), plus the
pseudo-method `exssnet+kkt` (ExSSNeT with KNN knowledge transfer, `kkt_mode: best`). Methods whose
config has a `density` (the supermask methods) run at each density, the others once. Every run is a
plain `run_training` from the config with a few overrides, in its own output_dir; the combined JSON is
rewritten (atomically) after each run, so a cut-off grid keeps what it finished, and `--resume` skips
the runs an existing output already holds.

    python benchmarks/accuracy.py --device-tag cpu
    python benchmarks/accuracy.py --device-tag h100 --model .devbundle/minilm-fp16 --data-root /tmp/webnlp
    python benchmarks/accuracy.py --report benchmarks/results/accuracy_h100.json   # tables only

Flags this script does not know are passed on to the config as overrides (`--mask_epochs 1`); a flag
that only other methods know (e.g. `--target_modules` for `finetune`) is left out of that method's runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # runs from a bare checkout too (the GPU machine has no install)

KKT_METHOD = "exssnet+kkt"  # not a registered method: exssnet with kkt_mode best
# Schema 1 files (written before the method registry) had no `storage_shared`; these two stored whole encoders.
LEGACY_DENSE = {"independent", "finetune"}
DATA_PREFIX = "../shared/data/webnlp"
FILE_KEYS = ("train_file", "validation_file", "test_file")
CURVE_POINTS = (0.25, 0.5, 1.0)
SCHEMA = 2


def log(msg: str) -> None:
    print(f"[accuracy {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the methods ---------------------------------------------------------------------------------
def all_methods() -> list[str]:
    """Every registered method, in registry order, with `exssnet+kkt` right after `exssnet`."""
    from exssnet_nlp import method_names

    out = []
    for name in method_names():
        out.append(name)
        if name == "exssnet":
            out.append(KKT_METHOD)
    return out


def base_method(method: str) -> str:
    return "exssnet" if method == KKT_METHOD else method


def takes_density(method: str) -> bool:
    """Whether the method's config has a `density` a user sets (the supermask methods do)."""
    from exssnet_nlp import get_method

    return "density" in {f.name for f in get_method(base_method(method)).config_fields()}


def method_flags(method: str, extra: list[str]) -> tuple[list[str], list[str]]:
    """`extra` split into the flags for `method` and those only other registered methods know (left out)."""
    from exssnet_nlp import method_names
    from exssnet_nlp.training.arguments import argument_parser

    own = set(argument_parser(base_method(method))._option_string_actions)
    others = set().union(*(argument_parser(m)._option_string_actions for m in method_names()))
    groups: list[list[str]] = []
    for token in extra:
        if token.startswith("--") or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    kept, dropped = [], []
    for group in groups:
        flag = group[0].split("=", 1)[0]
        (dropped if flag.startswith("--") and flag not in own and flag in others else kept).extend(group)
    return kept, dropped


# --- the grid ----------------------------------------------------------------------------------
def run_key(method: str, density: float | None) -> str:
    return method if density is None else f"{method}@{density:g}"


def grid(methods: list[str], densities: list[float]) -> list[tuple[str, float | None]]:
    """(method, density) pairs, density by density in the order given (so a cut-off grid has the first density
    whole); the methods without a density once, without one, in the first pass."""
    known = all_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(known)}")
    out: list[tuple[str, float | None]] = []
    for i, density in enumerate(densities or [None]):
        for method in methods:
            if not takes_density(method):
                if i == 0:
                    out.append((method, None))
            elif density is not None:
                out.append((method, density))
    return out


def ordered(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs in table order: by method as in the registry (methods no longer registered last), then by density."""
    order = all_methods()

    def key(run: dict[str, Any]) -> tuple[int, str, float]:
        method = run["method"]
        return (order.index(method) if method in order else len(order), method, run["density"] or 0.0)

    return sorted(runs.values(), key=key)


def rewrite_task_files(tasks: list[Any], data_root: str | None) -> list[Any]:
    """Tasks with the `../shared/data/webnlp` prefix of their files replaced by `data_root`."""
    if data_root is None:
        return tasks
    out = []
    for task in tasks:
        if isinstance(task, dict):
            task = dict(task)
            for key in FILE_KEYS:
                value = task.get(key)
                if isinstance(value, str) and value.startswith(DATA_PREFIX):
                    task[key] = data_root.rstrip("/") + value[len(DATA_PREFIX):]
        out.append(task)
    return out


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["device"] = info["gpu"]
    else:
        info["device"] = f"CPU: {cpu} x {os.cpu_count()} (torch threads {torch.get_num_threads()})"
    return info


def make_probe():
    """A callback that records the encoder's parameter dtype and device when training starts."""
    from exssnet_nlp import ContinualCallback

    class Probe(ContinualCallback):
        seen: dict[str, Any] = {}

        def on_train_begin(self, trainer) -> None:
            encoder = getattr(trainer.model, "encoder", None) or trainer.model
            params = list(encoder.parameters())
            self.seen = {"encoder_dtypes": sorted({str(p.dtype) for p in params}),
                         "device": str(params[0].device) if params else None,
                         "mixed_precision": trainer.accelerator.mixed_precision}

    return Probe()


def run_dir_name(method: str, density: float | None) -> str:
    """The output_dir name of a run under --runs-dir."""
    return method.replace("+", "_") + ("" if density is None else f"_d{density:g}")


def run_one(opts: argparse.Namespace, extra: list[str], method: str, density: float | None) -> dict[str, Any]:
    from exssnet_nlp import load_training_config, run_training

    output_dir = Path(opts.runs_dir) / run_dir_name(method, density)
    overrides = ["--method", base_method(method), "--output_dir", str(output_dir), "--overwrite_output_dir", "true",
                 "--kkt_mode", "best" if method == KKT_METHOD else "off", "--mixed_precision", opts.mixed_precision,
                 "--evaluations_per_phase", str(opts.evaluations_per_phase), "--disable_tqdm", "true",
                 "--save_checkpoints", "true" if opts.save_checkpoints else "false"]
    if density is not None:
        overrides += ["--density", str(density)]
    if opts.model is not None:
        overrides += ["--model_name_or_path", opts.model]
    extra, dropped = method_flags(method, list(extra))
    if dropped:
        log(f"{run_key(method, density)}: left out {dropped} (flags of other methods)")
    args, tasks = load_training_config(opts.config, overrides + extra)
    args.train_samples_per_class = None if opts.train_samples_per_class == "all" else int(opts.train_samples_per_class)
    tasks = rewrite_task_files(tasks, opts.data_root)
    probe = make_probe()
    start = time.perf_counter()
    results = run_training(args, tasks, callbacks=[probe])
    total = time.perf_counter() - start
    config = results["config"]
    method_config = config.get("method_config") or {}
    return {
        "method": method,
        "density": density,
        "output_dir": str(output_dir),
        "average_accuracy": results["average_accuracy"],
        "bwt": results["bwt"],
        "forgetting": results["forgetting"],
        "fwt": results["fwt"],
        "wall_seconds": results["timings"]["wall_seconds"],
        "process_seconds": total,
        "stored_bytes": results["storage"]["stored_bytes"],
        "storage_shared": results["storage"]["shared"],
        "storage_per_task": results["storage"]["per_task"],
        "tasks": results["tasks"],
        "accuracy_matrix": results["accuracy_matrix"],
        "untrained_accuracy": results["untrained_accuracy"],
        "capacity": results["capacity"],
        "kkt": results["kkt"],
        "restarts": results.get("restarts", {}),
        "curves": results["curves"],
        "timings_per_task": results["timings"]["per_task"],
        "encoder": probe.seen,
        # Every trainer setting (a hand-picked list missed `load_best_in_phase`), plus the nested ones tables read.
        "config": {**{k: method_config.get(k) for k in ("density", "target_modules", "pooling")},
                   "kkt_mode": (config.get("kkt") or {}).get("mode"),
                   **{k: v for k, v in config.items() if k not in ("method_config", "kkt", "tasks")}},
        "method_config": config.get("method_config"),
        "kkt_config": config.get("kkt"),
    }


def base_encoder_bytes(config: str, model: str | None) -> int | None:
    """Bytes of the pretrained encoder every masked method shares (its checkpoint needs it beside the masks)."""
    from transformers import AutoModel

    from exssnet_nlp import load_training_config
    from exssnet_nlp.training.arguments import resolve_model_path

    args, _ = load_training_config(config, [] if model is None else ["--model_name_or_path", model])
    try:
        encoder = AutoModel.from_pretrained(resolve_model_path(args.model_name_or_path))
    except (OSError, ValueError):
        return None
    encoder = getattr(encoder, "base_model", encoder)
    return sum(t.numel() * t.element_size() for t in encoder.state_dict().values())


def write_json(path: Path, data: dict[str, Any]) -> None:
    from exssnet_nlp.metrics import write_json_atomic

    write_json_atomic(path, data)


# --- the report ----------------------------------------------------------------------------------
def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100.0 * value:.{digits}f}"


def _density(run: dict[str, Any]) -> str:
    return "-" if run["density"] is None else f"{run['density']:g}"


def holds_own_encoder(run: dict[str, Any], base: int | None) -> bool:
    """Whether the run's stored tensors replace the pretrained encoder: a shared encoder at least its size
    (`finetune`), or every task's file at least its size (`independent`). Otherwise the checkpoint computes on
    top of the pretrained encoder, which a deployment holds beside it."""
    if "storage_shared" not in run:  # schema 1
        return run["method"] in LEGACY_DENSE
    if base is None:
        return False
    per_task = [t.get("total", 0) for t in (run.get("storage_per_task") or {}).values()]
    return run["storage_shared"] >= base or (bool(per_task) and min(per_task) >= base)


def results_table(data: dict[str, Any]) -> str:
    runs = data["runs"]
    independent = runs.get("independent", {}).get("stored_bytes")
    base = data.get("base_encoder_bytes")
    lines = ["| method | density | avg acc % | BWT % | forgetting % | FWT % | wall s | stored MB | of which shared MB "
             "| stored % of independent | stored + base encoder, % of independent |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in ordered(runs):
        share = "-" if not independent else f"{100.0 * run['stored_bytes'] / independent:.2f}"
        # Methods that store only what each task adds compute on the pretrained encoder: it comes on top.
        with_base = run["stored_bytes"] + (0 if holds_own_encoder(run, base) else base or 0)
        share_base = "-" if not independent or base is None else f"{100.0 * with_base / independent:.2f}"
        shared = "-" if "storage_shared" not in run else f"{run['storage_shared'] / 1e6:.2f}"
        lines.append(f"| {run['method']} | {_density(run)} | {_pct(run['average_accuracy'], 2)} | {_pct(run['bwt'], 2)} | "
                     f"{_pct(run['forgetting'], 2)} | {_pct(run['fwt'], 2)} | {run['wall_seconds']:.1f} | "
                     f"{run['stored_bytes'] / 1e6:.2f} | {shared} | {share} | {share_base} |")
    return "\n".join(lines)


def _curve_at(points: list[dict[str, Any]], fraction: float) -> float | None:
    if not points:
        return None
    return min(points, key=lambda p: abs(p["fraction"] - fraction))["accuracy"]


def kkt_tables(data: dict[str, Any]) -> str:
    """Mask-phase validation accuracy at 25/50/100% without vs with KKT, and KKT's sources, per density."""
    runs = data["runs"]
    densities = sorted({r["density"] for r in runs.values() if r["method"] == "exssnet+kkt"})
    blocks = []
    for density in densities:
        plain, kkt = runs.get(run_key("exssnet", density)), runs.get(run_key("exssnet+kkt", density))
        if kkt is None:
            continue
        head = " | ".join(f"{int(f * 100)}% no KKT | {int(f * 100)}% KKT" for f in CURVE_POINTS)
        lines = [f"Density {density:g}: mask-phase validation accuracy % (no KKT = exssnet, KKT = exssnet+kkt)", "",
                 f"| task | {head} |", "| --- |" + " ---: |" * (2 * len(CURVE_POINTS))]
        for task in kkt["tasks"]:
            cells = []
            for fraction in CURVE_POINTS:
                a = _curve_at((plain or {}).get("curves", {}).get(task, {}).get("mask", []), fraction) if plain else None
                b = _curve_at(kkt["curves"].get(task, {}).get("mask", []), fraction)
                cells += [_pct(a), _pct(b)]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines += ["", f"Density {density:g}: KKT's KNN accuracy % of each finished task's mask on the new task's sample",
                  "", "| task | KNN accuracy per finished task | threshold | chosen source |", "| --- | --- | ---: | --- |"]
        for task in kkt["tasks"][1:]:
            record = kkt["kkt"].get(task)
            if not record:
                lines.append(f"| {task} | - | - | - |")
                continue
            knn = ", ".join(f"{t} {_pct(a)}" for t, a in record["knn_accuracy"].items()) or "-"
            lines.append(f"| {task} | {knn} | {_pct(record['threshold'])} | {', '.join(record['sources']) or 'none'} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def owned_shares(run: dict[str, Any]) -> list[float] | None:
    """Share of each task's mask that it owns (and so trains in its weight phase), in task order: its stored values
    over the first task's, which owns its whole mask (a task stores only the values it owns). None for a run that
    stores no per-task values (supsup, the dense methods)."""
    per_task, tasks = run.get("storage_per_task") or {}, run["tasks"]
    if not tasks or not all("values" in per_task.get(t, {}) for t in tasks) or not per_task[tasks[0]]["values"]:
        return None
    return [per_task[t]["values"] / per_task[tasks[0]]["values"] for t in tasks]


def ownership_table(data: dict[str, Any]) -> str:
    """Low shares mean later masks sit inside earlier ones, and exssnet has little to train."""
    runs = [(r, shares) for r in ordered(data["runs"]) if (shares := owned_shares(r)) is not None]
    if not runs:
        return ""
    tasks = runs[0][0]["tasks"]
    lines = ["Share of each task's mask it owns (trains in its weight phase), %", "",
             "| run | " + " | ".join(tasks) + " |", "| --- |" + " ---: |" * len(tasks)]
    for run, shares in runs:
        lines.append(f"| {run_key(run['method'], run['density'])} | " + " | ".join(_pct(v) for v in shares) + " |")
    return "\n".join(lines)


def matrices(data: dict[str, Any]) -> str:
    blocks = []
    for run in ordered(data["runs"]):
        key = run_key(run["method"], run["density"])
        rows = [f"{key} (rows: after task i; columns: evaluated on task j; %)"]
        for row in run["accuracy_matrix"]:
            rows.append("  " + " ".join(f"{_pct(v):>5}" for v in row))
        blocks.append("\n".join(rows))
    return "\n\n".join(blocks)


def report(data: dict[str, Any], with_matrices: bool = False) -> str:
    machine = data.get("machine", {})
    parts = [f"Machine: {machine.get('device', '?')}; torch {machine.get('torch', '?')}, transformers "
             f"{machine.get('transformers', '?')}; train samples per class: {data.get('train_samples_per_class')}; "
             f"mixed precision: {data.get('mixed_precision')}", "", results_table(data)]
    owned = ownership_table(data)
    if owned:
        parts += ["", owned]
    kkt = kkt_tables(data)
    if kkt:
        parts += ["", kkt]
    if with_matrices:
        parts += ["", matrices(data)]
    return "\n".join(parts)


# --- main ------------------------------------------------------------------------------------------

def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script that trains through `run_one` shares."""
    parser.add_argument("--config", default="configs/webnlp_local.yaml", help="the task sequence and base settings (YAML)")
    parser.add_argument("--model", default=None, help="overrides model_name_or_path")
    parser.add_argument("--data-root", default=None, help=f"replaces the {DATA_PREFIX} prefix of the task files")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="the trainer's mixed_precision")

def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--methods", default=None, help="comma-separated (default: all), from: " + ", ".join(all_methods()))
    parser.add_argument("--densities", default="0.05,0.1", help="comma-separated densities for the masked methods")
    parser.add_argument("--train-samples-per-class", default="200", help="an integer, or `all`")
    parser.add_argument("--device-tag", default="cpu", help="names the output and the runs folder")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/accuracy_<tag>.json")
    parser.add_argument("--runs-dir", default=None, help="per-run output_dirs (default: runs/accuracy_<tag>)")
    parser.add_argument("--evaluations-per-phase", type=int, default=4)
    parser.add_argument("--save-checkpoints", action="store_true", help="save a checkpoint after each task (off: faster)")
    parser.add_argument("--resume", action="store_true", help="keep the runs --output already holds and skip them")
    parser.add_argument("--matrices", action="store_true", help="also print every accuracy matrix")
    parser.add_argument("--report", metavar="JSON", default=None, help="print the tables of an existing result file and exit")
    opts, extra = parser.parse_known_args(argv)
    if opts.train_samples_per_class != "all" and not opts.train_samples_per_class.isdigit():
        parser.error("--train-samples-per-class takes a positive integer or `all`")
    opts.output = opts.output or f"benchmarks/results/accuracy_{opts.device_tag}.json"
    opts.runs_dir = opts.runs_dir or f"runs/accuracy_{opts.device_tag}"
    return opts, extra


def main(argv: list[str] | None = None) -> int:
    opts, extra = parse(argv)
    import logging

    # An application configures logging; the library only logs (the trainer's per-task lines).
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if opts.report:
        print(report(json.loads(Path(opts.report).read_text()), with_matrices=opts.matrices))
        return 0
    methods = [m.strip() for m in (opts.methods or ",".join(all_methods())).split(",") if m.strip()]
    densities = [float(d) for d in opts.densities.split(",") if d.strip()]
    todo = grid(methods, densities)
    output = Path(opts.output)
    data: dict[str, Any] = {"schema": SCHEMA, "config": opts.config, "model": opts.model, "data_root": opts.data_root,
                            "train_samples_per_class": opts.train_samples_per_class, "mixed_precision": opts.mixed_precision,
                            "evaluations_per_phase": opts.evaluations_per_phase, "extra_overrides": extra,
                            "machine": machine_info(), "base_encoder_bytes": base_encoder_bytes(opts.config, opts.model), "runs": {}}
    if opts.resume and output.exists():
        data["runs"] = json.loads(output.read_text()).get("runs", {})
        log(f"resuming: {len(data['runs'])} run(s) already in {output}")
    log(f"machine: {data['machine']['device']}; torch {data['machine']['torch']}; {len(todo)} run(s)")
    for method, density in todo:
        key = run_key(method, density)
        if key in data["runs"]:
            log(f"skip {key} (already in {output})")
            continue
        log(f"start {key}")
        run = run_one(opts, extra, method, density)
        data["runs"][key] = run
        data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(output, data)
        log(f"done {key}: avg acc {_pct(run['average_accuracy'], 2)} BWT {_pct(run['bwt'], 2)} wall {run['wall_seconds']:.1f}s "
            f"stored {run['stored_bytes'] / 1e6:.2f} MB encoder {run['encoder']}")
    print(report(data, with_matrices=opts.matrices))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
