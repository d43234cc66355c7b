"""The `exssnet-nlp` command: train, evaluate, predict, export, push, methods."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

COMMANDS = {
    "train": "Learn a sequence of tasks (YAML --config plus --flags; `train --method NAME --help` lists the method's flags).",
    "evaluate": "Test accuracy of every task of a checkpoint, on the data of a training config.",
    "predict": "Classify texts (arguments, --input FILE or stdin) with a task of a checkpoint, or infer each text's task.",
    "export": "Write one task of a checkpoint as a stock transformers ...ForSequenceClassification (a mean-pooled task: "
              "a Sentence Transformers model with its head).",
    "push": "Upload a checkpoint with a model card to the Hugging Face Hub.",
    "methods": "List the registered continual methods.",
}


def _train(rest: list[str]) -> int:
    from .training.arguments import DEFAULT_METHOD, argument_parser, load_training_config

    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--config", default=None)
    probe.add_argument("--method", default=None)
    probe.add_argument("-h", "--help", action="store_true")
    known, _ = probe.parse_known_args(rest)
    if known.help:
        method = known.method
        if method is None and known.config:
            import yaml

            with open(known.config) as handle:
                method = (yaml.safe_load(handle) or {}).get("method")
        argument_parser(method or DEFAULT_METHOD).print_help()
        return 0
    args, tasks = load_training_config(known.config, rest)
    from .training.trainer import run_training

    results = run_training(args, tasks)
    if int(os.environ.get("RANK", "0")) == 0:  # several processes: the main one prints (the matrix is in the log)
        summary = {k: results[k] for k in ("average_accuracy", "bwt", "forgetting", "fwt")}
        print(json.dumps(summary, indent=2))
        print(f"results: {args.output_dir}/results.json, plots: {args.output_dir}/accuracy_matrix.png, "
              f"{args.output_dir}/learning_curves.png")
    return 0


def _top_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="exssnet-nlp", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Continual learning for Hugging Face encoders: one model, many tasks, no forgetting.",
        epilog="examples:\n  exssnet-nlp train --config configs/demo.yaml\n  exssnet-nlp train --config configs/demo.yaml "
               "--method lora\n  exssnet-nlp train --method supsup --help      # every flag of a method, with its help\n"
               "  exssnet-nlp predict --checkpoint runs/demo/checkpoint \"a text\"\n"
               "  exssnet-nlp export --checkpoint runs/demo/checkpoint --task bbc_news --output exported/")
    parser.add_argument("--version", action="version", version=f"exssnet-nlp {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name, text in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)  # each command parses its own flags (`COMMAND --help`)
    return parser


def _parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"exssnet-nlp {name}", description=COMMANDS[name], allow_abbrev=False)
    parser.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"],
                        help="Logging level (default: info).")
    if name != "methods":
        parser.add_argument("--checkpoint", required=True, help="Checkpoint directory (or Hub repo id).")
    if name == "export":
        parser.add_argument("--task", required=True, help="The task to export.")
        parser.add_argument("--output", required=True, help="Directory for the exported model.")
    elif name == "push":
        parser.add_argument("--repo-id", required=True, help="Hub repository, e.g. user/my-continual-model.")
        parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    elif name == "predict":
        parser.add_argument("--task", default=None, help="The task whose head answers (default: inferred per text).")
        parser.add_argument("--inference", default=None, help="How to infer the task: router, router_class, "
                            "router_knn or entropy (default: the library's measured best).")
        parser.add_argument("--input", default=None, help="File of texts, one per line or JSON lines with a \"text\" "
                            "field; '-' is stdin (the default when no text is given).")
        parser.add_argument("--max-length", type=int, default=None, help="Tokens per text (default: the task's training length).")
        parser.add_argument("--batch-size", type=int, default=32, help="Texts per forward pass.")
        parser.add_argument("texts", nargs="*", help="Texts to classify.")
    elif name == "evaluate":
        parser.add_argument("--tasks", nargs="*", default=None, help="Task names (default: every task in the checkpoint).")
        parser.add_argument("--config", default=None, help="Training YAML whose task list gives the data.")
        parser.add_argument("--eval_samples_per_class", type=int, default=None,
                            help="Cap on test examples per class (default: the training run's).")
        parser.add_argument("--max_length", type=int, default=None, help="Tokens per example (default: the training run's).")
        parser.add_argument("--seed", type=int, default=None, help="Seed of the test sample (default: the training run's).")
        parser.add_argument("--batch-size", type=int, default=64, help="Examples per forward pass.")
    return parser


def _command(name: str, rest: list[str]) -> int:
    ns = _parser(name).parse_args(rest)
    if name == "methods":
        from .methods import get_method, method_names

        for method in method_names():
            print(f"{method:12s} {get_method(method).description}")
        return 0
    from .methods import load_pretrained
    from .training import evaluation

    if name == "export":
        model = load_pretrained(ns.checkpoint)
        exported = model.export_task(ns.task, ns.output)
        # A mean-pooled task exports as a Sentence Transformers model (no stock classifier mean-pools).
        how = "SentenceTransformer(...).encode(texts) -> logits" if hasattr(exported, "encode") else \
            "AutoModelForSequenceClassification.from_pretrained"
        print(f"exported task {ns.task!r} to {ns.output}: load it with {how}")
    elif name == "push":
        model, trainer_state = load_pretrained(ns.checkpoint, return_trainer_state=True)
        results = _known_results((trainer_state or {}).get("state") or {})
        print(model.push_to_hub(ns.repo_id, private=ns.private or None, results=results))
    elif name == "predict":
        _predict(ns)
    elif name == "evaluate":
        accuracies = evaluation.evaluate_checkpoint(ns.checkpoint, config_file=ns.config, tasks=ns.tasks,
                                                    eval_samples_per_class=ns.eval_samples_per_class, batch_size=ns.batch_size,
                                                    max_length=ns.max_length, seed=ns.seed)
        print(json.dumps(accuracies, indent=2))
    return 0


def _known_results(state: dict) -> dict | None:
    """The accuracy matrix (and what derives from it) a training run stored in its checkpoint, if any."""
    matrix = state.get("accuracy_matrix")
    if not matrix or not state.get("tasks"):
        return None
    from .metrics import summarize

    # summarize uses the trained prefix of a run that stopped early, as the trainer does.
    return {"tasks": state["tasks"], "accuracy_matrix": matrix, **summarize(matrix, state.get("untrained"))}


def _predict(ns: argparse.Namespace) -> None:
    from .methods import load_pretrained
    from .serving import read_texts

    texts = list(ns.texts)
    if ns.input is not None or not texts:
        if ns.input in (None, "-"):
            if sys.stdin.isatty():
                raise ValueError("no texts: give them as arguments, with --input FILE, or on stdin (one per line or JSON lines).")
            texts += read_texts(sys.stdin)
        else:
            try:
                with open(ns.input, encoding="utf-8") as handle:
                    texts += read_texts(handle)
            except OSError as err:
                raise ValueError(f"cannot read --input {ns.input!r} ({err.strerror}); give a readable text or jsonl file.") from None
    model = load_pretrained(ns.checkpoint)
    predictions = model.predict(texts, task=ns.task, batch_size=ns.batch_size, max_length=ns.max_length,
                                inference=ns.inference)
    for text, pred in zip(texts, predictions, strict=True):
        print(json.dumps({"text": text, **pred}, ensure_ascii=False))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        try:  # --help, --version, a typo: argparse answers (without importing torch)
            _top_parser().parse_args(argv or ["--help"])
        except SystemExit as done:
            return int(done.code or 0)
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    level = probe.parse_known_args(argv[1:])[0].log_level
    # The application configures handlers; the library only logs.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level.upper())
    try:
        if argv[0] == "train":
            return _train(argv[1:])
        return _command(argv[0], argv[1:])
    except ValueError as err:
        # Bad input: one clear line, no traceback.
        print(f"exssnet-nlp {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
