"""The `exssnet-nlp` command: train, evaluate, predict, export, push."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _train(rest: list[str]) -> int:
    from .trainer import load_training_config, run_training

    parser = argparse.ArgumentParser(prog="exssnet-nlp train", add_help=False)
    parser.add_argument("--config", default=None, help="YAML file; any --key value after it overrides the file.")
    parser.add_argument("-h", "--help", action="store_true")
    known, overrides = parser.parse_known_args(rest)
    if known.help:
        from transformers import HfArgumentParser

        from .trainer import ContinualTrainingArguments

        print("usage: exssnet-nlp train --config FILE [--key value ...]\n")
        HfArgumentParser(ContinualTrainingArguments).print_help()
        return 0
    args, tasks = load_training_config(known.config, overrides)
    results = run_training(args, tasks)
    from .metrics import format_accuracy_matrix

    print("\nAccuracy matrix (%): row i = after training task i")
    print(format_accuracy_matrix(results["accuracy_matrix"], results["tasks"]))
    summary = {k: results[k] for k in ("average_accuracy", "bwt", "forgetting", "fwt")}
    print(json.dumps(summary, indent=2))
    print(f"results: {args.output_dir}/results.json, plot: {args.output_dir}/accuracy_matrix.png")
    return 0


def _checkpoint_command(name: str, rest: list[str]) -> int:
    from . import checkpoint

    parser = argparse.ArgumentParser(prog=f"exssnet-nlp {name}")
    parser.add_argument("--checkpoint", required=True, help="Checkpoint directory (or Hub repo id).")
    if name == "export":
        parser.add_argument("--task", required=True)
        parser.add_argument("--output", required=True)
        ns = parser.parse_args(rest)
        model = checkpoint.load_pretrained(ns.checkpoint)
        model.export_task(ns.task, ns.output)
        print(f"exported task {ns.task!r} to {ns.output}: load it with AutoModelForSequenceClassification.from_pretrained")
        return 0
    if name == "push":
        parser.add_argument("--repo-id", required=True)
        parser.add_argument("--private", action="store_true")
        ns = parser.parse_args(rest)
        model = checkpoint.load_pretrained(ns.checkpoint)
        print(model.push_to_hub(ns.repo_id, private=ns.private or None))
        return 0
    if name == "predict":
        parser.add_argument("--task", required=True)
        parser.add_argument("--max-length", type=int, default=128)
        parser.add_argument("texts", nargs="+")
        ns = parser.parse_args(rest)
        model, tokenizer = checkpoint.load_for_inference(ns.checkpoint)
        for text, pred in zip(ns.texts, checkpoint.predict(model, tokenizer, ns.task, ns.texts, ns.max_length), strict=True):
            print(json.dumps({"text": text, **pred}))
        return 0
    if name == "evaluate":
        parser.add_argument("--tasks", nargs="*", default=None, help="Task names (default: every task in the checkpoint).")
        parser.add_argument("--config", default=None, help="Training YAML whose task list gives the data.")
        parser.add_argument("--eval_samples_per_class", type=int, default=None)
        parser.add_argument("--batch-size", type=int, default=64)
        ns = parser.parse_args(rest)
        accuracies = checkpoint.evaluate_checkpoint(ns.checkpoint, config_file=ns.config, tasks=ns.tasks,
                                                    eval_samples_per_class=ns.eval_samples_per_class, batch_size=ns.batch_size)
        print(json.dumps(accuracies, indent=2))
        return 0
    raise AssertionError(name)


COMMANDS = ("train", "evaluate", "predict", "export", "push")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: exssnet-nlp {{{','.join(COMMANDS)}}} ...\n  exssnet-nlp train --config configs/demo.yaml\n"
              "  exssnet-nlp export --checkpoint runs/demo/checkpoint --task bbc_news --output exported/")
        return 0 if (not argv or argv[0] in ("-h", "--help")) else 2
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        if argv[0] == "train":
            return _train(argv[1:])
        return _checkpoint_command(argv[0], argv[1:])
    except ValueError as err:
        # Bad input: one clear line, no traceback.
        print(f"exssnet-nlp {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
