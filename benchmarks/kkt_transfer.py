"""Does KKT (KNN knowledge transfer) help ExSSNeT on sequences of related tasks? Two-task runs, KKT off vs best.

Two sequences of two tasks each, where the second task should profit from the first one's mask:

* `reviews`: `yelp_review_full` then `amazon_review_full` (both 5-star review ratings);
* `ag_news_relabelled`: `ag_news` then `ag_news_relabelled`, the very same sampled rows (train, validation and
  test) with every label moved by a fixed permutation, label -> (label + 1) % 4. Same texts, same classes, other
  label ids: the old subnetwork separates the new classes perfectly well, so KKT's KNN should pick it.

Each (sequence, arm, seed) is one `accuracy.run_one` (method `exssnet` for KKT off, `exssnet+kkt` for KKT best) on
`configs/webnlp_local.yaml` with the CPU budget of `grid.py` and 8 validation points per phase, so the step at which
the second task's mask phase reaches an accuracy can be read off its curve. The combined JSON is rewritten
(atomically) after every run; a run it already holds is skipped, and a run cut off after its first task resumes from
its checkpoint:

    python benchmarks/kkt_transfer.py --threads 1                 # 2 sequences x 2 arms x 3 seeds, CPU budget
    python benchmarks/kkt_transfer.py --report                    # the markdown tables of the JSON
    python benchmarks/kkt_transfer.py --budget smoke --seeds 42 --model /path/to/tiny --output /tmp/k.json \\
        --runs-dir /tmp/k_runs                                    # end to end in seconds (numbers meaningless)

Flags this script does not know go to the config as overrides, as in `accuracy.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import accuracy  # the sibling scripts (this folder is on sys.path); accuracy sets the offline environment and
import grid  # puts the repository root on sys.path, so a bare checkout runs this too

ROOT = accuracy.ROOT

SCHEMA = 1
SEEDS = (42, 43, 44)
DENSITY = 0.1  # the density of configs/webnlp_local.yaml and of the grid's decisive exssnet cells
RELABELLED = "ag_news_relabelled"
SEQUENCES: dict[str, tuple[str, str]] = {
    "ag_news_relabelled": ("ag_news", RELABELLED),
    "reviews": ("yelp_review_full", "amazon_review_full"),
}
ARMS: dict[str, str] = {"off": "exssnet", "best": accuracy.KKT_METHOD}  # kkt_mode -> accuracy.py's method name
# The grid's budgets, with a denser validation curve: "steps to reach" is read off its points.
BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": {**grid.BUDGETS["cpu"], "evaluations_per_phase": 8},
    "smoke": {**grid.BUDGETS["smoke"], "evaluations_per_phase": 2},
}
EPS = 1e-9  # accuracies are fractions of the same validation set: equal values may differ in the last bit


def log(msg: str) -> None:
    print(f"[kkt_transfer {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def relabel(label: int, num_labels: int) -> int:
    """The fixed permutation of the relabelled copy: every class moves one id up (a derangement: no label kept)."""
    return (label + 1) % num_labels


def run_key(sequence: str, arm: str, seed: int) -> str:
    return f"{sequence}/{arm}/s{seed}"


def todo(sequences: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """(sequence, arm, seed) in run order: seed by seed, both arms of a sequence together, so a cut-off
    measurement still holds complete off/best pairs."""
    return [(s, arm, seed) for seed in seeds for s in sequences for arm in ARMS]


# --- the tasks ---------------------------------------------------------------------------------
def base_tasks(config: str) -> dict[str, dict[str, Any]]:
    """The task specs of `config`, by name."""
    import yaml

    data = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    return {t["name"]: dict(t) for t in data.get("tasks", []) if isinstance(t, dict)}


def sampling_args(opts: argparse.Namespace, extra: list[str], seed: int) -> dict[str, Any]:
    """The per-class sample sizes and seed a run of this budget loads its tasks with (as the trainer does)."""
    from exssnet_nlp import load_training_config

    budget = BUDGETS[opts.budget]
    # The budget's flags for other methods (the dense and OSF learning rates) are left out, as run_one does.
    flags, _ = accuracy.method_flags("exssnet", budget["overrides"] + list(extra) + ["--seed", str(seed)])
    args, _ = load_training_config(opts.config, ["--method", "exssnet", *flags])
    n_train = budget["train_samples_per_class"]
    return {"train_samples_per_class": None if n_train == "all" else int(n_train),
            "eval_samples_per_class": args.eval_samples_per_class,
            "validation_samples_per_class": args.validation_samples_per_class, "seed": args.seed}


def write_relabelled(source: dict[str, Any], sampling: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write the relabelled copy of `source` as it is sampled in a run (same rows, permuted labels); its task spec.

    The files hold exactly the run's per-class sample of each split (validation as its own file), so the run's
    sampling takes every row: the new task trains, validates and tests on the texts the first task did."""
    from exssnet_nlp.data import load_task

    data = load_task(source, **sampling)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"name": RELABELLED}
    for split, dataset in data.splits().items():
        rows = [{**row, "label": relabel(int(row["label"]), data.num_labels)} for row in dataset]
        path = out_dir / f"{split}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)  # a file cut off mid-write would change the data fingerprint of a resumed run
        spec[f"{split}_file"] = str(path.resolve())
    if data.label_names:
        # New id relabel(l) names the class old id l named: the label names follow the texts.
        names = [""] * data.num_labels
        for old, name in enumerate(data.label_names):
            names[relabel(old, data.num_labels)] = name
        (out_dir / "labels.json").write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8")
    return spec


def sequence_config(opts: argparse.Namespace, extra: list[str], sequence: str, seed: int) -> Path:
    """A copy of the config whose task list is the sequence (written beside the runs: one per sequence and seed)."""
    import yaml

    data = yaml.safe_load(Path(opts.config).read_text(encoding="utf-8")) or {}
    known = base_tasks(opts.config)
    tasks = []
    for name in SEQUENCES[sequence]:
        if name == RELABELLED:
            source = accuracy.rewrite_task_files([known["ag_news"]], opts.data_root)[0]
            tasks.append(write_relabelled(source, sampling_args(opts, extra, seed),
                                          Path(opts.runs_dir) / "data" / f"{RELABELLED}_s{seed}"))
        else:
            tasks.append(known[name])  # left as in the config: run_one applies --data-root to it
    data["tasks"] = tasks
    path = Path(opts.runs_dir) / "configs" / f"{sequence}_s{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --- one run -----------------------------------------------------------------------------------
def task2_record(run: dict[str, Any], restarts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What this benchmark reads of a run: the second task's mask curve, final accuracies, KKT record and restarts.

    A task whose mask phase ends at chance is trained again (`restart_stuck_tasks`); its curve is the last attempt's,
    so the mask steps of the discarded attempts are counted separately (`discarded_mask_steps`)."""
    first, second = run["tasks"][:2]
    curves = run["curves"].get(second, {})
    mask = curves.get("mask", [])
    last_phase = curves.get("weight") or mask
    record = (run.get("kkt") or {}).get(second)
    kkt = None
    if record:
        scores = record.get("knn_accuracy") or {}
        source = record["sources"][0] if record.get("sources") else None
        kkt = {"source": source, "knn_accuracy": scores, "score": scores.get(source) if source else scores.get(first),
               "chance": record.get("chance"), "threshold": record.get("threshold"), "beat_chance": bool(record.get("sources")),
               "num_samples": record.get("num_samples"), "seconds": record.get("seconds")}
    discarded = sum(1 for r in restarts.get(second, []) if r.get("restarted"))
    steps = mask[-1]["step"] if mask else None
    return {"task": second, "mask_curve": mask, "mask_steps": steps, "restarts": restarts.get(second, []),
            "discarded_mask_steps": discarded * (steps or 0),
            "mask_final_validation": mask[-1]["accuracy"] if mask else None,
            "final_validation": last_phase[-1]["accuracy"] if last_phase else None,
            "test_accuracy": run["accuracy_matrix"][1][1], "first_task_test_after": run["accuracy_matrix"][1][0],
            "kkt": kkt}


def run_cell(opts: argparse.Namespace, extra: list[str], sequence: str, arm: str, seed: int) -> dict[str, Any]:
    budget = BUDGETS[opts.budget]
    method = ARMS[arm]
    runs_dir = Path(opts.runs_dir) / f"{sequence}_s{seed}"
    ns = argparse.Namespace(runs_dir=str(runs_dir), model=opts.model, data_root=opts.data_root,
                            mixed_precision=opts.mixed_precision, evaluations_per_phase=budget["evaluations_per_phase"],
                            save_checkpoints=True, train_samples_per_class=budget["train_samples_per_class"],
                            config=str(sequence_config(opts, extra, sequence, seed)))
    overrides = budget["overrides"] + list(extra) + ["--seed", str(seed)]
    # As in grid.py: a checkpoint after each task lets a run cut off after task 1 resume at task 2; a run that
    # ended but whose result never reached the JSON starts over.
    run_dir = runs_dir / (method.replace("+", "_") + f"_d{DENSITY:g}")
    overrides += ["--overwrite_output_dir", "true" if (run_dir / "results.json").exists() else "false"]
    run = accuracy.run_one(ns, overrides, method, DENSITY)
    # run_one leaves out the restarts of stuck tasks: read them from the run's own results file.
    restarts = json.loads((Path(run["output_dir"]) / "results.json").read_text()).get("restarts") or {}
    run.update(restarts=restarts, sequence=sequence, arm=arm, seed=seed, budget=opts.budget, overrides=overrides,
               commit=opts.commit, machine=accuracy.machine_info(), finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
               task2=task2_record(run, restarts))
    return run


# --- the comparison ----------------------------------------------------------------------------
def steps_to_reach(curve: list[dict[str, Any]], target: float | None) -> int | None:
    """Optimizer step of the first curve point at or above `target` (None: never, or no target)."""
    if target is None:
        return None
    for point in curve:
        if point["accuracy"] >= target - EPS:
            return point["step"]
    return None


def owned_share(run: dict[str, Any]) -> float | None:
    """Task 2's owned mask values (those its weight phase may train: not in task 1's mask) over task 1's, which owns its
    whole mask. Near 0: task 2's mask sits inside task 1's, as KKT's start makes likely, and its weight phase has
    almost nothing to train."""
    per_task = run.get("storage_per_task") or {}
    first, second = run["tasks"][:2]
    full, owned = (per_task.get(first) or {}).get("values"), (per_task.get(second) or {}).get("values")
    return None if not full or owned is None else owned / full


def _restarted(task2: dict[str, Any]) -> int:
    """Attempts of task 2 discarded because its mask phase ended at chance."""
    return sum(1 for r in task2["restarts"] if r.get("restarted"))


def _spent(task2: dict[str, Any], step: int | None) -> int | None:
    """Mask-phase steps spent to reach `step` of the last attempt: the discarded attempts' steps come first."""
    return None if step is None else task2["discarded_mask_steps"] + step


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per sequence: per seed, KKT's steps to the no-KKT run's final mask-phase validation accuracy against the
    no-KKT run's steps; per arm, task 2's accuracies as mean and sample std over seeds."""
    out: dict[str, Any] = {}
    for sequence in SEQUENCES:
        seeds = sorted({r["seed"] for r in runs.values() if r["sequence"] == sequence})
        if not seeds:
            continue
        per_seed = []
        for seed in seeds:
            off, best = runs.get(run_key(sequence, "off", seed)), runs.get(run_key(sequence, "best", seed))
            row: dict[str, Any] = {"seed": seed, "complete": off is not None and best is not None}
            if off is not None:
                t = off["task2"]
                row.update(target=t["mask_final_validation"], off_total_steps=t["mask_steps"] + t["discarded_mask_steps"],
                           # The no-KKT run's own first reach: its curve may plateau before its last step.
                           off_steps_to_reach=_spent(t, steps_to_reach(t["mask_curve"], t["mask_final_validation"])),
                           off_restarts=_restarted(t), off_test=t["test_accuracy"],
                           off_owned=owned_share(off))
            if best is not None:
                t = best["task2"]
                row.update(kkt=t["kkt"], best_total_steps=t["mask_steps"] + t["discarded_mask_steps"],
                           best_mask_final=t["mask_final_validation"], best_restarts=_restarted(t), best_test=t["test_accuracy"],
                           best_owned=owned_share(best),
                           best_steps_to_reach=_spent(t, steps_to_reach(t["mask_curve"], row.get("target"))) if off else None)
            per_seed.append(row)
        arms = {}
        for arm in ARMS:
            group = [r["task2"] for r in runs.values() if r["sequence"] == sequence and r["arm"] == arm]
            arms[arm] = {"seeds": sorted(r["seed"] for r in runs.values() if r["sequence"] == sequence and r["arm"] == arm)}
            for metric in ("test_accuracy", "mask_final_validation", "final_validation", "first_task_test_after"):
                arms[arm][metric], arms[arm][metric + "_std"] = _mean_std([g[metric] for g in group])
        out[sequence] = {"tasks": list(SEQUENCES[sequence]), "per_seed": per_seed, "arms": arms}
    return out


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{100 * mean:.2f} +- {100 * (std or 0.0):.2f}"


def _kkt_cell(kkt: dict[str, Any] | None) -> str:
    if kkt is None:
        return "no record"
    score = f"KNN {_pct(kkt['score'])}% vs threshold {_pct(kkt['threshold'])}%"
    return f"{kkt['source']} ({score})" if kkt["beat_chance"] else f"none ({score})"


def report(data: dict[str, Any]) -> str:
    """Two markdown tables: per sequence (both arms over seeds), and per seed (KKT's pick and the steps)."""
    summary = summarize(data.get("runs", {}))
    if not summary:
        return "no runs yet"
    machine = data.get("machine", {})
    lines = [f"Budget {data.get('budget')}: {data.get('settings')}; density {data.get('density')}; commit "
             f"{data.get('commit')}; machine: {machine.get('device', '?')}", "",
             "| sequence | seeds (no KKT / KKT) | KKT picked a source | KKT steps to reach no-KKT final mask val "
             "(per seed) | no-KKT steps: first reach / total (per seed) | mask-phase final val % no KKT | KKT | "
             "task-2 test % no KKT (mean +- std) | KKT |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for sequence, s in summary.items():
        off, best = s["arms"]["off"], s["arms"]["best"]
        done = [r for r in s["per_seed"] if r["complete"]]
        picked = sum(1 for r in done if r["kkt"] and r["kkt"]["beat_chance"])
        reach = ", ".join("never" if r["best_steps_to_reach"] is None else str(r["best_steps_to_reach"]) for r in done) or "-"
        own = ", ".join(f"{r['off_steps_to_reach']}/{r['off_total_steps']}" for r in done) or "-"
        name = f"{sequence} ({' -> '.join(s['tasks'])})"
        lines.append(f"| {name} | {len(off['seeds'])} / {len(best['seeds'])} | {picked} of {len(done)} | {reach} | {own} | "
                     f"{_pm(off['mask_final_validation'], off['mask_final_validation_std'])} | "
                     f"{_pm(best['mask_final_validation'], best['mask_final_validation_std'])} | "
                     f"{_pm(off['test_accuracy'], off['test_accuracy_std'])} | "
                     f"{_pm(best['test_accuracy'], best['test_accuracy_std'])} |")
    lines += ["", "| sequence | seed | KKT record (task 2) | target: no-KKT final mask val % | KKT steps to reach | "
              "no-KKT first reach / total steps | KKT final mask val % | test % no KKT | test % KKT | restarts no KKT / KKT | "
              "task-2 owned mask % no KKT / KKT |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for sequence, s in summary.items():
        for r in s["per_seed"]:
            reach = "-" if not r["complete"] else ("never" if r["best_steps_to_reach"] is None else str(r["best_steps_to_reach"]))
            own = f"{r['off_steps_to_reach']} / {r['off_total_steps']}" if "target" in r else "-"
            lines.append(f"| {sequence} | {r['seed']} | {_kkt_cell(r['kkt']) if 'kkt' in r else '-'} | {_pct(r.get('target'))} | "
                         f"{reach} | {own} | {_pct(r.get('best_mask_final'))} | {_pct(r.get('off_test'))} | "
                         f"{_pct(r.get('best_test'))} | {r.get('off_restarts', '-')} / {r.get('best_restarts', '-')} | "
                         f"{_pct(r.get('off_owned'))} / {_pct(r.get('best_owned'))} |")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="settings preset (see BUDGETS)")
    parser.add_argument("--smoke", action="store_true", help="same as --budget smoke")
    accuracy.add_run_options(parser)
    parser.add_argument("--sequences", default=",".join(SEQUENCES), help="comma list from: " + ", ".join(SEQUENCES))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 beside other jobs)")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/kkt_transfer_<budget>.json")
    parser.add_argument("--runs-dir", default=None, help="default: runs/kkt_transfer_<budget>")
    parser.add_argument("--report", action="store_true", help="print the tables of --output and exit")
    opts, extra = parser.parse_known_args(argv)
    if opts.smoke:
        opts.budget = "smoke"
    unknown = [s for s in opts.sequences.split(",") if s not in SEQUENCES]
    if unknown:
        parser.error(f"unknown sequence(s) {unknown}; choose from {', '.join(SEQUENCES)}")
    opts.output = Path(opts.output or f"benchmarks/results/kkt_transfer_{opts.budget}.json")
    opts.runs_dir = opts.runs_dir or f"runs/kkt_transfer_{opts.budget}"
    opts.commit = grid._commit()  # the code the runs ran, read once at launch
    return opts, extra


def main(argv: list[str] | None = None) -> int:
    opts, extra = parse(argv)
    import logging

    # An application configures logging; the library only logs (the trainer's per-task lines).
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if opts.report:
        print(report(json.loads(opts.output.read_text())) if opts.output.exists() else f"no results in {opts.output}")
        return 0
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    budget = BUDGETS[opts.budget]
    data: dict[str, Any] = {"schema": SCHEMA, "budget": opts.budget, "config": opts.config, "model": opts.model,
                            "data_root": opts.data_root, "density": DENSITY, "extra_overrides": extra,
                            "settings": {"train_samples_per_class": budget["train_samples_per_class"],
                                         "overrides": budget["overrides"],
                                         "evaluations_per_phase": budget["evaluations_per_phase"]},
                            "sequences": {k: list(v) for k, v in SEQUENCES.items()},
                            "relabel": "label -> (label + 1) % num_labels, on the same sampled rows as ag_news",
                            "arms": {arm: {"method": m, "kkt_mode": arm} for arm, m in ARMS.items()}, "runs": {}}
    if opts.output.exists():
        old = json.loads(opts.output.read_text())
        data = {**old, **data, "runs": old.get("runs", {})}  # the old commit and machine stay until a run replaces them
        log(f"resuming: {len(data['runs'])} run(s) already in {opts.output}")
    sequences = opts.sequences.split(",")
    for sequence, arm, seed in todo(sequences, [int(s) for s in opts.seeds.split(",")]):
        key = run_key(sequence, arm, seed)
        if key in data["runs"]:
            continue
        log(f"start {key}")
        run = run_cell(opts, extra, sequence, arm, seed)
        data["runs"][key] = run
        data.update(commit=opts.commit, machine=accuracy.machine_info(), finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    summary=summarize(data["runs"]))
        accuracy.write_json(opts.output, data)
        t = run["task2"]
        log(f"done {key}: task 2 mask curve {[(p['step'], round(p['accuracy'], 3)) for p in t['mask_curve']]}, test "
            f"{_pct(t['test_accuracy'], 2)}%, KKT {_kkt_cell(t['kkt']) if arm != 'off' else 'off'}, wall {run['wall_seconds']:.0f}s")
    if data["runs"] and data.get("summary") != summarize(data["runs"]):
        data["summary"] = summarize(data["runs"])  # a newer summary of the same runs (this script changed)
        accuracy.write_json(opts.output, data)
    print(report(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
