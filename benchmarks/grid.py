"""The evidence grid: every method, density and seed on the five WebNLP tasks, one JSON per run.

One command per budget. Each cell (method, density, seed, variant) is one `run_training` in its own
output_dir, and its result is written to `benchmarks/results/grid_<budget>/<cell>.json` when it ends;
a cell whose JSON exists is skipped, so the grid completes across sessions and lanes:

    python benchmarks/grid.py --budget cpu                      # every cell, decisive ones first
    python benchmarks/grid.py --budget cpu --lane 0/2 --threads 1 & python benchmarks/grid.py --budget cpu --lane 1/2 --threads 1
    python benchmarks/grid.py --budget cpu --only decisive      # the cells the goals rest on
    python benchmarks/grid.py --budget gpu --data-root /tmp/webnlp --model .devbundle/minilm
    python benchmarks/grid.py --budget cpu --report             # table (mean +- std over seeds) + frontier.png

`--variant NAME` runs a hypothesis (a set of overrides, see VARIANTS) as extra rows of the same table.
Flags this script does not know go to the config as overrides, as in `accuracy.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import accuracy  # noqa: E402  (after the path set-up: the sibling script)

SEEDS = (42, 43, 44)
DENSITIES = (0.05, 0.1, 0.3, 0.5)
# Settings per budget, on top of configs/webnlp_local.yaml (paper order, MiniLM, mean pooling, ffn masked, 2 + 2 epochs).
BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": {"train_samples_per_class": "100", "overrides": [
        "--max_length", "64", "--eval_samples_per_class", "100", "--weight_learning_rate", "1e-3",
        "--dense_learning_rate", "5e-5", "--osf_learning_rate", "5e-5"], "evaluations_per_phase": 2},
    "gpu": {"train_samples_per_class": "all", "overrides": [
        "--max_length", "128", "--eval_samples_per_class", "100", "--weight_learning_rate", "1e-3",
        "--dense_learning_rate", "5e-5", "--osf_learning_rate", "5e-5"], "evaluations_per_phase": 4},
    # Minutes, not hours: checks the runner end to end (numbers meaningless).
    "smoke": {"train_samples_per_class": "4", "overrides": [
        "--max_length", "32", "--eval_samples_per_class", "4", "--validation_samples_per_class", "2",
        "--mask_epochs", "1", "--weight_epochs", "1"], "evaluations_per_phase": 1},
}
# Hypotheses of the gap study: each changes one thing and adds rows `<method>[<variant>]`.
VARIANTS: dict[str, list[str]] = {
    "kaiming": ["--score_init", "kaiming_uniform"],
    "epochs4": ["--mask_epochs", "4"],
    # SupSup's score optimizer: SGD, momentum 0.9, LR 0.1, cosine (this project's default: AdamW 1e-3, linear).
    "sgd_masks": ["--mask_optimizer", "sgd", "--mask_learning_rate", "0.1", "--mask_lr_scheduler", "cosine"],
    # Every attention and feed-forward linear (the default before `ffn`) instead of the feed-forward ones.
    "allmods": ["--target_modules", "all"],
    # Each phase keeps its best validation point, its start included: with 4 mask epochs exssnet's weight phase lowered
    # ag_news validation accuracy on both seeds run (0.887 -> 0.850, 0.787 -> 0.775), and the weight phase is undone then.
    "best_in_phase": ["--load_best_in_phase", "true"],
    "epochs4_best": ["--mask_epochs", "4", "--load_best_in_phase", "true"],
    # The weight phase at LR 1e-4 (the grid's 1e-3): at density 0.5 it lowered ag_news, the first task (which owns its
    # whole mask), from supsup's 88.08 to 85.33 (test, mean of three seeds), and its validation accuracy on every seed.
    "wlr1e4": ["--weight_learning_rate", "1e-4"],
    # The same with each phase's best validation point kept (exssnet's default from density 0.3): might a gentler weight
    # phase be kept where 1e-3's was undone (ag_news, every seed)? At 0.5 it cost 1.00 (yelp and amazon lower).
    "wlr1e4_best": ["--weight_learning_rate", "1e-4", "--load_best_in_phase", "true"],
    # Ownership: scores of weights an earlier task's mask holds start at 0.8x, so a later task starts on more free
    # weights, which exssnet trains (with `magnitude` scores later tasks own 5 to 11% of their masks). The gap study's
    # 0.5 (one seed) lost 5.19 points, with amazon's mask phase at chance: that was before stuck phases restarted.
    "reuse08": ["--reuse_score_scale", "0.8"],
    # lora only: rank 48 on the feed-forward layers stores about as many bytes per task as exssnet@0.5 (2.8 MB with the
    # head), alpha kept at 2 * r as at the default rank 8. Is exssnet@0.5 ahead of lora at the same bytes?
    "r48": ["--r", "48", "--lora_alpha", "96"],
    # lora only: rank 16 (1.34 MB per task), just above exssnet@0.1's bytes (1.22 MB).
    "r16": ["--r", "16", "--lora_alpha", "32"],
    # The attention projections (query, key, value, output) instead of the grid's ffn: lora's own default targets, as
    # a user taking the library's defaults would run it.
    "attn": ["--target_modules", "attention"],
}
# Variants that set a method's size (lora's rank, as density sets a mask's): points of their own on the frontier.
SIZE_VARIANTS = ("r16", "r48")
# Variants whose flags every method accepts (trainer-wide settings) but only these methods' phases read.
MASK_PHASE = ("supsup", "ssnet", "exssnet", "exssnet+kkt")  # a "mask" phase: mask_optimizer, mask_lr_scheduler
WEIGHT_PHASE = ("ssnet", "exssnet", "exssnet+kkt")  # a "weight" phase after the mask phase: weight_learning_rate
VARIANT_METHODS: dict[str, tuple[str, ...]] = {"epochs4": (*MASK_PHASE, "wsn"), "epochs4_best": (*MASK_PHASE, "wsn"),
                                               "sgd_masks": MASK_PHASE, "wlr1e4": WEIGHT_PHASE, "wlr1e4_best": WEIGHT_PHASE}
DECISIVE = [("exssnet", 0.1), ("supsup", 0.1), ("lora", None), ("independent", None), ("finetune", None)]


def log(msg: str) -> None:
    print(f"[grid {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cell_name(method: str, density: float | None, seed: int, variant: str | None) -> str:
    name = accuracy.run_dir_name(method, density) + f"_s{seed}"
    return name + (f"__{variant}" if variant else "")


def cells(only: str, methods: list[str] | None, densities: list[float], seeds: list[int]) -> list[tuple[str, float | None, int]]:
    """(method, density, seed) in run order: the decisive cells first (each at every seed), then the rest."""
    if only == "decisive":
        first = list(DECISIVE)
    else:
        # the decisive cells run first only where --methods and --densities ask for them
        first = [c for c in DECISIVE if (methods is None or c[0] in methods) and (c[1] is None or c[1] in densities)]
    rest = [c for c in accuracy.grid(methods or accuracy.all_methods(), densities) if c not in first]
    out = [(m, d, s) for m, d in first for s in seeds]
    if only != "decisive":
        out += [(m, d, s) for m, d in rest for s in seeds]
    return out


def varied_cells(todo: list[tuple[str, float | None, int]], variant: str) -> list[tuple[str, float | None, int]]:
    """The cells a variant changes. A method that does not know one of its flags (the runner leaves other methods'
    flags out), or that `VARIANT_METHODS` leaves out, would run its defaults under the variant's name: skipped, with a
    line saying so."""
    kept = []
    for method in dict.fromkeys(m for m, _, _ in todo):
        dropped = accuracy.method_flags(method, VARIANTS[variant])[1]
        if dropped:
            log(f"skip {method} [{variant}]: {method} has no {' '.join(f for f in dropped if f.startswith('--'))}")
        elif method not in VARIANT_METHODS.get(variant, (method,)):
            log(f"skip {method} [{variant}]: only {', '.join(VARIANT_METHODS[variant])} read its settings")
        else:
            kept.append(method)
    return [c for c in todo if c[0] in kept]


def run_cell(opts: argparse.Namespace, extra: list[str], method: str, density: float | None, seed: int) -> dict[str, Any]:
    budget = BUDGETS[opts.budget]
    name = cell_name(method, density, seed, opts.variant)
    ns = argparse.Namespace(runs_dir=str(Path(opts.runs_dir) / name), model=opts.model, data_root=opts.data_root,
                            mixed_precision=opts.mixed_precision, evaluations_per_phase=budget["evaluations_per_phase"],
                            save_checkpoints=True, train_samples_per_class=budget["train_samples_per_class"],
                            config=opts.config)
    overrides = budget["overrides"] + VARIANTS.get(opts.variant or "", []) + list(extra) + ["--seed", str(seed)]
    # A checkpoint after every task: a cell cut off (end of a session) resumes at its next task when run again.
    # Only a cell whose run ended but whose JSON was never written starts over.
    run_dir = Path(ns.runs_dir) / accuracy.run_dir_name(method, density)
    overrides += ["--overwrite_output_dir", "true" if (run_dir / "results.json").exists() else "false"]
    run = accuracy.run_one(ns, overrides, method, density)
    from exssnet_nlp.checkpoint import FORMAT_VERSION

    run.update(seed=seed, variant=opts.variant, budget=opts.budget, overrides=overrides, commit=opts.commit,
               checkpoint_format=FORMAT_VERSION,
               machine=accuracy.machine_info(), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return run


# --- the report --------------------------------------------------------------------------------
VALUE_METHODS = ("exssnet", "ssnet", "wsn", "lora")  # the methods that store trained per-task values (`values_dtype`)


def kept_exact_values(run: dict[str, Any]) -> bool:
    """A cell of a values-storing method that kept its values exact (`values_dtype` null or predating the field)."""
    return run["method"].split("+")[0] in VALUE_METHODS and (run.get("method_config") or {}).get("values_dtype") is None


def row_label(run: dict[str, Any]) -> str | None:
    """What sets a cell apart from the method's defaults: its variant, exact values (a values-storing method run
    before the float16 default, or with `values_dtype: null`), or a post hoc re-evaluation."""
    labels = [run.get("variant"), run.get("post_hoc")]
    if kept_exact_values(run) and not run.get("post_hoc"):
        labels.append("exact values")
    return ", ".join(label for label in labels if label) or None


def row_key(run: dict[str, Any]) -> str:
    label = row_label(run)
    return accuracy.run_key(run["method"], run["density"]) + (f" [{label}]" if label else "")


def post_hoc_runs(results_dir: Path, runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells of exact values re-evaluated with their values rounded to float16 (`benchmarks/values_dtype.py`,
    `results/values_dtype_<budget>.json`): the final accuracy row and bytes as float16 values give them. Only the
    final row was re-measured, so BWT, forgetting and FWT are unknown (None)."""
    path = results_dir.parent / f"values_dtype_{results_dir.name.removeprefix('grid_')}.json"
    if not path.exists():
        return []
    derived = []
    for stem, cell in sorted(json.loads(path.read_text())["cells"].items()):
        run = runs.get(stem)
        if run is None or "float16" not in cell:
            continue
        final = [cell["float16"][task] for task in run["tasks"]]
        derived.append({**run, "post_hoc": "float16 values, post hoc", "average_accuracy": statistics.fmean(final),
                        "bwt": None, "forgetting": None, "fwt": None,
                        "storage_current": {"stored_bytes": cell["float16_bytes_per_task"] * len(final), "per_task": None}})
    return derived


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]  # None: undefined for the method (multitask has no BWT)
    if not known:
        return None, None
    # One seed has no spread: None ("-" in the table, no error bar), not a misleading 0.00.
    return statistics.fmean(known), (statistics.stdev(known) if len(known) > 1 else None)


def serving_bytes(run: dict[str, Any]) -> int:
    """What serving every task with its task id takes: the checkpoint's bytes without the task-inference routers
    (only the methods that can infer a task store them; the comparison is at the same job). Read in the current
    checkpoint format when `--remeasure-storage` recorded it (`storage_current`)."""
    storage = run.get("storage_current") or {"stored_bytes": run["stored_bytes"], "per_task": run.get("storage_per_task")}
    routers = sum(t.get("router", 0) for t in (storage["per_task"] or {}).values())
    return storage["stored_bytes"] - routers


def owned_share(run: dict[str, Any]) -> float | None:
    """Mean share of its mask each later task owns (`accuracy.owned_shares`); None where no values are stored."""
    shares = accuracy.owned_shares(run)
    return None if shares is None or len(shares) < 2 else sum(shares[1:]) / (len(shares) - 1)


def remeasure_storage(results_dir: Path) -> list[str]:
    """Load each cell's checkpoint with this code and record what it stores in the current checkpoint format.

    A lossless change of how tensors are stored (format 3 deflates masks) moves the bytes of cells that ran before
    it, not their accuracy: their checkpoints are read back, not re-trained. The cell's own numbers stay as run;
    a cell that ran with this code gets its own bytes again.
    """
    from exssnet_nlp import load_pretrained
    from exssnet_nlp.checkpoint import FORMAT_VERSION

    lines = []
    for path in sorted(results_dir.glob("*.json")):
        run = json.loads(path.read_text())
        if path.name == "summary.json":
            continue
        checkpoint = ROOT / run["output_dir"] / "checkpoint"
        if not checkpoint.is_dir():
            lines.append(f"{path.stem}: no checkpoint at {checkpoint}; left as run")
            continue
        model = load_pretrained(str(checkpoint))
        per_task = {task: model.task_storage_bytes(task) for task in model.finished_tasks}
        shared = model.shared_storage_bytes()
        run["storage_current"] = {"format_version": FORMAT_VERSION, "per_task": per_task, "shared": shared,
                                  "stored_bytes": sum(t["total"] for t in per_task.values()) + shared,
                                  "commit": _commit(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        accuracy.write_json(path, run)
        lines.append(f"{path.stem}: {run['stored_bytes']:,d} B as run -> {run['storage_current']['stored_bytes']:,d} B "
                     f"in format {FORMAT_VERSION}")
    return lines


def setting(run: dict[str, Any], name: str) -> Any:
    """A trainer setting of a cell: from its recorded config, else from the overrides it ran with (cells before
    accuracy.py recorded every setting kept only a list of them)."""
    if name in run.get("config", {}):
        return run["config"][name]
    overrides = run.get("overrides") or []
    flag = f"--{name}"
    # the last occurrence wins, as when the cell ran (a variant's flags follow the budget's)
    at = [i for i, token in enumerate(overrides[:-1]) if token == flag]
    return overrides[at[-1] + 1] if at else None


def phase_gain(run: dict[str, Any]) -> float | None:
    """Mean over tasks of the validation accuracy the last phase kept minus what the first phase kept: what a second
    phase (exssnet's weight phase) adds. None for one-phase methods and runs without curves."""
    best = str(setting(run, "load_best_in_phase")).lower() == "true"  # a phase then keeps its best point, not its last
    gains = []
    for curves in (run.get("curves") or {}).values():
        kept = [max(p["accuracy"] for p in points) if best else points[-1]["accuracy"]
                for points in curves.values() if points]
        if len(kept) < 2:
            return None
        gains.append(kept[-1] - kept[0])
    return sum(gains) / len(gains) if gains else None


def _same_setting(flag_value: str, today: Any) -> bool:
    if isinstance(today, bool) or today is None:
        return flag_value.lower() == str(today).lower()
    try:
        return float(flag_value) == float(today)
    except (TypeError, ValueError):
        return flag_value == str(today)


def default_now(run: dict[str, Any]) -> bool:
    """Whether a variant's flags are the library's defaults today for its method and density, under the budget's
    overrides: supsup's 4 mask epochs, exssnet's `load_best_in_phase` from 0.3 (the grid's YAML pins some settings
    itself; a user gets the library's). The frontier's first panel shows such a row in place of the plain one."""
    variant = run.get("variant")
    if not variant or variant not in VARIANTS:
        return False
    from exssnet_nlp.methods import get_method
    from exssnet_nlp.methods.registry import TRAINER_DEFAULTS
    from exssnet_nlp.training.arguments import ContinualTrainingArguments

    try:  # a plug-in method not loaded when the report runs: its rows are plain rows
        spec = get_method(run["method"].split("+")[0])
        config = spec.make_config({} if run.get("density") is None else {"density": run["density"]})
    except ValueError:
        return False
    trainer = {f.name: f.default for f in fields(ContinualTrainingArguments)}
    budget = BUDGETS.get(run.get("budget") or "", {}).get("overrides", [])
    budget_settings = dict(zip(budget[::2], budget[1::2], strict=True))
    flags = VARIANTS[variant]
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        name = flag.removeprefix("--")
        if flag in budget_settings:
            today: Any = budget_settings[flag]
        elif name in TRAINER_DEFAULTS:
            today = spec.trainer_default(name, config)
        else:
            today = getattr(config, name) if hasattr(config, name) else trainer.get(name)
        if not _same_setting(value, today):
            return False
    return True


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, density, variant): mean and sample std over its seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(row_key(run), []).append(run)
    order = accuracy.all_methods()
    rows = []
    for key, group in groups.items():
        first = group[0]
        n_tasks = len(first["tasks"])
        row: dict[str, Any] = {"key": key, "method": first["method"], "density": first["density"],
                               "variant": first.get("variant"), "label": row_label(first),
                               "seeds": sorted(r["seed"] for r in group)}
        for metric in ("average_accuracy", "bwt", "forgetting", "fwt"):
            row[metric], row[metric + "_std"] = _mean_std([r[metric] for r in group])
        row["phase_gain"], _ = _mean_std([phase_gain(r) for r in group])
        row["owned_later"], _ = _mean_std([owned_share(r) for r in group])
        row["bytes_per_task"], row["bytes_per_task_std"] = _mean_std([serving_bytes(r) / n_tasks for r in group])
        row["wall_per_task"], _ = _mean_std([r["wall_seconds"] / n_tasks for r in group])
        row["machines"] = sorted({r.get("machine", {}).get("device", "?") for r in group})
        row["default_now"] = default_now(first)
        # Restarts of tasks stuck at chance, over the seeds (results["restarts"] also records a last attempt that
        # ended at chance and was kept; runs from before the detector record none).
        row["restarts"] = sum(bool(e.get("restarted")) for r in group for events in (r.get("restarts") or {}).values()
                              for e in events)
        rows.append(row)
    rows.sort(key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order),
                             r["density"] or 0.0, r["label"] or ""))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | density | seeds | avg acc % (mean +- std) | BWT % | forgetting % | FWT % | stored MB per task (no routers) "
             "| wall s per task | restarts | last phase's val gain % | later tasks own % of their mask |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    def signed(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:+.2f}"

    for r in rows:
        density = "-" if r["density"] is None else f"{r['density']:g}"
        name = r["method"] + (f" [{r['label']}]" if r.get("label") else "")
        spread = " (one seed)" if r["average_accuracy_std"] is None else f" +- {pct(r['average_accuracy_std'])}"
        lines.append(
            f"| {name} | {density} | {len(r['seeds'])} | {pct(r['average_accuracy'])}{spread} "
            f"| {pct(r['bwt'])} | {pct(r['forgetting'])} | {pct(r['fwt'])} | {r['bytes_per_task'] / 1e6:.3f} "
            f"| {r['wall_per_task']:.1f} | {r.get('restarts', 0)} | {signed(r.get('phase_gain'))} "
            f"| {pct(r.get('owned_later'))} |")
    return "\n".join(lines)


def frontier(panels: list[tuple[list[dict[str, Any]], str]], path: Path) -> None:
    """Average accuracy against stored bytes per task (log x), error bars over seeds. Two panels per (rows, title):
    the grid as a user chooses from it (one point per method and density, at today's defaults where a variant
    measured them, with the accuracy-per-byte frontier drawn), then each hypothesis as an arrow from its plain row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.5, 5.5 * 2 * len(panels)))
    FigureCanvasAgg(fig)
    for i, (rows, title) in enumerate(panels):
        _frontier_panel(fig.add_subplot(2 * len(panels), 1, 2 * i + 1), chosen_rows(rows),
                        title + ": each method and density (lora: rank)")
        _hypothesis_panel(fig.add_subplot(2 * len(panels), 1, 2 * i + 2), rows,
                          title + ": each hypothesis, from its plain row")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def _cell_key(row: dict[str, Any], size: bool = False) -> str:
    """method@density; with `size`, a size variant's rank too (lora r48 is another point, not lora's hypothesis)."""
    variant = row.get("variant")
    return accuracy.run_key(row["method"], row["density"]) + (f" {variant}" if size and variant in SIZE_VARIANTS else "")


def chosen_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a user picks from. A variant that is a method's default now stands for its
    method and density in the first (the plain row, run with the old default, is then only a hypothesis's origin);
    A size variant (lora's rank, as density is a mask's) is a point of its own there; every other variant is a
    hypothesis."""
    replaced = {_cell_key(r) for r in rows if r.get("variant") and r.get("default_now")}
    return [r for r in rows if (r.get("default_now") or r["variant"] in SIZE_VARIANTS if r.get("variant")
                                else _cell_key(r) not in replaced)]


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The continual rows no other beats at no more bytes (multitask, the non-continual reference, left out), by bytes."""
    best, front = -1.0, []
    for r in sorted((r for r in rows if r["method"] != "multitask"),
                    key=lambda r: (r["bytes_per_task"], -r["average_accuracy"])):
        if r["average_accuracy"] > best:
            best = r["average_accuracy"]
            front.append(r)
    return front


MARKERS = "osD^PX*h<>pd"  # no "v": it marks a row below the axis


def accuracy_window(values: list[float], span: float = 12.0) -> tuple[float, float]:
    """The y range (%) the frontier shows: every mean within `span` points of the best, so that one failed row (a
    mask phase at chance) does not squeeze the rows a user chooses between into a strip; rows below are drawn at the
    bottom edge with their value."""
    best = max(values)
    shown = [v for v in values if v >= best - span]
    return math.floor(min(shown)) - 1.5, math.ceil(best) + 1.0


def _axes(ax: Any, low: float, high: float, title: str) -> None:
    ax.set_ylim(low, high)
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes per task (log scale; the shared pretrained encoder and task-inference routers not counted)")
    ax.set_ylabel("average accuracy after the last task, % (mean +- std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a grid without variants has an empty hypothesis panel
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a point


def _frontier_panel(ax: Any, rows: list[dict[str, Any]], title: str) -> None:
    # One colour per method, one marker per density within it; a post hoc re-evaluation (open marker) shares its
    # trained row's style, with an arrow from that row.
    colours: dict[str, str] = {}
    markers: dict[str, str] = {}
    taken: dict[str, int] = {}  # markers given out per method
    trained: dict[str, tuple[float, float]] = {}
    widest = max((r["bytes_per_task"] for r in rows), default=0.0)  # the right-most point's label goes left of it
    low, high = accuracy_window([100 * r["average_accuracy"] for r in rows]) if rows else (0.0, 100.0)
    for r in rows:
        base = _cell_key(r, size=True)
        colour = colours.setdefault(r["method"], f"C{len(colours) % 10}")
        if base not in markers:
            taken[r["method"]] = taken.get(r["method"], 0) + 1
            markers[base] = MARKERS[(taken[r["method"]] - 1) % len(MARKERS)]
        marker = markers[base]
        accuracy_pct = 100 * r["average_accuracy"]
        below = accuracy_pct < low
        point = (r["bytes_per_task"], low + 0.3 if below else accuracy_pct)
        hollow = "post hoc" in (r.get("label") or "")
        spread = r["average_accuracy_std"]
        ax.errorbar(*point, yerr=None if spread is None or below else 100 * spread, fmt="v" if below else marker,
                    capsize=3, color=colour, mfc="none" if hollow else colour,
                    label=r["key"] + f" (n={len(r['seeds'])})" + (f": {accuracy_pct:.1f}%, below the axis" if below else ""))
        if hollow:
            if base in trained:
                ax.annotate("", xy=point, xytext=trained[base],
                            arrowprops={"arrowstyle": "->", "color": colour, "linestyle": ":"})
            continue
        trained[base] = point
        right_edge = point[0] >= widest
        text = f"{base}: {accuracy_pct:.1f}% (below)" if below else base
        ax.annotate(text, point, fontsize=7, xytext=(-4 if right_edge else 4, 4), textcoords="offset points",
                    ha="right" if right_edge else "left")
    front = pareto(rows)
    if len(front) > 1:
        xs = [r["bytes_per_task"] for r in front]
        ys = [100 * r["average_accuracy"] for r in front]
        ax.step(xs + [max(widest, xs[-1])], ys + [ys[-1]], where="post", color="0.4", linestyle="--", linewidth=1,
                label="frontier: most accurate at no more bytes", zorder=0)
    _axes(ax, low, high, title)


def _hypothesis_panel(ax: Any, rows: list[dict[str, Any]], title: str) -> None:
    """Each variant row but sizes, with a dotted arrow from the plain row of its method and density (the change
    it measured)."""
    plain: dict[str, dict[str, Any]] = {}
    for r in rows:  # float16 values (as variants stored them) over exact ones: the arrow is the variant's change alone
        if not r.get("variant") and (_cell_key(r) not in plain or "post hoc" in (r.get("label") or "")):
            plain[_cell_key(r)] = r
    variants = [r for r in rows if r.get("variant") and r["variant"] not in SIZE_VARIANTS]
    shown = variants + [plain[k] for k in {_cell_key(v) for v in variants} if k in plain]
    low, high = accuracy_window([100 * r["average_accuracy"] for r in shown]) if shown else (0.0, 100.0)
    widest = max((r["bytes_per_task"] for r in shown), default=0.0)
    colours: dict[str, str] = {}
    for r in sorted(shown, key=lambda r: r["key"]):
        colour = colours.setdefault(r["variant"] or "", f"C{len(colours) % 10}")
        accuracy_pct = 100 * r["average_accuracy"]
        below = accuracy_pct < low
        point = (r["bytes_per_task"], low + 0.3 if below else accuracy_pct)
        spread = r["average_accuracy_std"]
        ax.errorbar(*point, yerr=None if spread is None or below else 100 * spread, fmt="v" if below else "o",
                    capsize=3, color="0.5" if not r["variant"] else colour, mfc="none" if not r["variant"] else colour,
                    label=r["key"] + f" (n={len(r['seeds'])})" + (f": {accuracy_pct:.1f}%, below the axis" if below else ""))
        origin = plain.get(_cell_key(r)) if r["variant"] else None
        text = _cell_key(r) + (f" [{r['variant']}]" if r["variant"] else "")
        if origin is not None:
            delta = accuracy_pct - 100 * origin["average_accuracy"]
            text += f" {delta:+.2f}"
            start = (origin["bytes_per_task"], max(low + 0.3, 100 * origin["average_accuracy"]))
            ax.annotate("", xy=point, xytext=start, arrowprops={"arrowstyle": "->", "color": colour, "linestyle": ":"})
        if below:
            text += f": {accuracy_pct:.1f}% (below)"
        right_edge = point[0] >= widest / 1.15  # near the right edge: the label goes left of the point
        ax.annotate(text, point, fontsize=6, xytext=(-4 if right_edge else 4, 4 if r["variant"] else -9),
                    textcoords="offset points", ha="right" if right_edge else "left",
                    color="0.3" if not r["variant"] else colour)
    _axes(ax, low, high, title)


def report(results_dir: Path, plot: Path | None) -> str:
    cells = {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json")) if p.name != "summary.json"}
    if not cells:
        return f"no results in {results_dir}"
    rows = aggregate(list(cells.values()) + post_hoc_runs(results_dir, cells))
    machines = sorted({m for r in rows for m in r["machines"]})
    accuracy.write_json(results_dir / "summary.json", {"rows": rows, "machines": machines})
    if plot is not None:
        frontier([(rows, panel_title(results_dir, machines))], plot)
    return f"Machines: {'; '.join(machines)}\n\n" + table(rows) + "\n\n" + frontier_text(rows)


def frontier_text(rows: list[dict[str, Any]]) -> str:
    """The pick list as the data gives it: each continual row on the frontier of the first panel, cheapest first."""
    lines = ["Frontier (each method and density at today's defaults; the most accurate continual row at no more bytes):"]
    for r in pareto(chosen_rows(rows)):
        spread = "" if r["average_accuracy_std"] is None else f" +- {100 * r['average_accuracy_std']:.2f}"
        lines.append(f"- from {r['bytes_per_task'] / 1e6:.3f} MB per task: {r['key']}, "
                     f"{100 * r['average_accuracy']:.2f}{spread}% ({len(r['seeds'])} seed{'s' * (len(r['seeds']) > 1)})")
    return "\n".join(lines)


def panel_title(results_dir: Path, machines: list[str]) -> str:
    return f"WebNLP, 5 tasks, MiniLM-L6 ({results_dir.name}); {'; '.join(machines)}"


def frontier_all(results_root: Path) -> Path | None:
    """`frontier.png`: one panel per budget that has a summary (GPU first: the budget the goals are read at)."""
    panels = []
    for budget in ("gpu", "cpu"):
        summary = results_root / f"grid_{budget}" / "summary.json"
        if summary.exists():
            data = json.loads(summary.read_text())
            for row in data["rows"]:  # summaries written before the field
                row.setdefault("default_now", default_now({**row, "budget": budget}))
            panels.append((data["rows"], panel_title(summary.parent, data["machines"])))
    if not panels:
        return None
    frontier(panels, results_root / "frontier.png")
    return results_root / "frontier.png"


# --- main ----------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="settings preset (see BUDGETS)")
    accuracy.add_run_options(parser)
    parser.add_argument("--methods", default=None, help="comma list (default: every method, + exssnet+kkt)")
    parser.add_argument("--densities", default=",".join(f"{d:g}" for d in DENSITIES))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--only", choices=["all", "decisive"], default="all",
                        help="decisive: only the cells the goals rest on (exssnet/supsup @0.1, lora, independent, finetune)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=None, help="a hypothesis: extra rows")
    parser.add_argument("--lane", default="0/1", help="i/n: run every n-th cell starting at i (parallel processes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 for side-by-side lanes)")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    parser.add_argument("--start-before", type=float, default=None,
                        help="seconds from launch after which no new cell starts (device time limits)")
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results/grid_<budget>")
    parser.add_argument("--runs-dir", default=None, help="default: runs/grid_<budget>")
    parser.add_argument("--report", action="store_true", help="aggregate the results dir, write frontier.png, exit")
    parser.add_argument("--remeasure-storage", action="store_true",
                        help="re-read every cell's checkpoint, record its bytes as this code stores them "
                             "(storage_current), exit")
    opts, extra = parser.parse_known_args(argv)
    opts.results_dir = Path(opts.results_dir or f"benchmarks/results/grid_{opts.budget}")
    opts.runs_dir = opts.runs_dir or f"runs/grid_{opts.budget}"
    opts.commit = _commit()  # the code a cell ran, read once at launch (a later checkout does not change it)
    return opts, extra


def _commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None  # a bare copy (the GPU machine): no git


def main(argv: list[str] | None = None) -> int:
    opts, extra = parse(argv)
    import logging

    # An application configures logging; the library only logs (the trainer's per-task lines).
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if opts.remeasure_storage:
        print("\n".join(remeasure_storage(opts.results_dir)))
        return 0
    if opts.report:
        print(report(opts.results_dir, opts.results_dir.parent / f"frontier_{opts.budget}.png"))
        if opts.results_dir.resolve().parent == ROOT / "benchmarks" / "results":
            frontier_all(opts.results_dir.parent)
        return 0
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    lane, lanes = (int(x) for x in opts.lane.split("/"))
    methods = [m.strip() for m in opts.methods.split(",")] if opts.methods else None
    todo = cells(opts.only, methods, [float(d) for d in opts.densities.split(",")],
                 [int(s) for s in opts.seeds.split(",")])
    todo = [c for i, c in enumerate(todo) if i % lanes == lane]
    if opts.variant:
        todo = varied_cells(todo, opts.variant)
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    done, launched = 0, time.monotonic()
    for method, density, seed in todo:
        path = opts.results_dir / (cell_name(method, density, seed, opts.variant) + ".json")
        if path.exists():
            continue
        if opts.max_runs is not None and done >= opts.max_runs:
            break
        if opts.start_before is not None and time.monotonic() - launched > opts.start_before:
            log(f"not starting {path.stem}: past --start-before {opts.start_before:g}s")
            break
        log(f"start {path.stem}")
        run = run_cell(opts, extra, method, density, seed)
        accuracy.write_json(path, run)
        done += 1
        log(f"done {path.stem}: avg {100 * run['average_accuracy']:.2f} bwt {100 * run['bwt']:.2f} "
            f"wall {run['wall_seconds']:.0f}s")
    print(report(opts.results_dir, opts.results_dir.parent / f"frontier_{opts.budget}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
