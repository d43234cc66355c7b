"""Issue 15: the library as users of transformers, datasets and accelerate expect it."""

from __future__ import annotations

import pytest
from conftest import WORDS, make_args, write_task
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from exssnet_nlp.data import load_task
from exssnet_nlp.training import ContinualTrainer, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(n: int, seed: int) -> dict[str, list]:
    import random

    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        texts.append(" ".join(rng.choice(WORDS["sentiment"][label]) for _ in range(6)))
        labels.append(label)
    return {"review": texts, "stars": labels}


def test_a_datasetdict_and_a_dataset_in_the_task_list(tiny_model_dir, tmp_path):
    features = Features({"review": Value("string"), "stars": ClassLabel(names=["bad", "good"])})
    reviews = DatasetDict({"train": Dataset.from_dict(_rows(24, 0), features=features),
                           "test": Dataset.from_dict(_rows(10, 1), features=features)})
    data = load_task({"name": "reviews", "dataset": reviews, "text_column": "review", "label_column": "stars"},
                     validation_samples_per_class=2)
    assert data.label_names == ["bad", "good"] and len(data.test) == 10 and len(data.train) == 20
    # One Dataset: a seeded 80/20 train/test split.
    single = load_task({"name": "one", "dataset": Dataset.from_dict(_rows(30, 2)), "text_column": "review",
                        "label_column": "stars"}, validation_samples_per_class=0)
    assert (len(single.train), len(single.test)) == (24, 6)
    # Through the trainer, beside a file task.
    topic = write_task(tmp_path / "data", "topic", WORDS["topic"], n_train=10, n_test=6)
    args = make_args(tiny_model_dir, tmp_path / "run", "exssnet", mask_epochs=1, weight_epochs=1)
    tasks = [topic, {"name": "reviews", "dataset": reviews, "text_column": "review", "label_column": "stars"}]
    results = ContinualTrainer(build_model(args), args, tasks).train()
    assert results["tasks"] == ["topic", "reviews"] and results["accuracy_matrix"][1][1] is not None


def test_a_bare_dataset_in_the_task_list_is_named(tiny_model_dir, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / "run", "exssnet")
    with pytest.raises(ValueError, match=r"a Dataset in the task list needs a name.*'dataset': ds"):
        ContinualTrainer(build_model(args), args, [Dataset.from_dict(_rows(8, 0))])


# --- 2: streaming --------------------------------------------------------------------------------------
def test_a_streamed_local_file_trains_from_yaml(tiny_model_dir, tmp_path):
    import yaml

    from exssnet_nlp.training import load_training_config, run_training

    topic = write_task(tmp_path / "data", "topic", WORDS["topic"], n_train=16, n_test=8)
    config = {"model_name_or_path": tiny_model_dir, "method": "exssnet", "density": 0.3, "mask_epochs": 1, "weight_epochs": 1,
              "max_length": 16, "train_samples_per_class": 6, "validation_samples_per_class": 2, "disable_tqdm": True,
              "output_dir": str(tmp_path / "run"), "pooling": "mean",
              "tasks": [{**topic, "streaming": True, "num_labels": 3}]}
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(config))
    args, tasks = load_training_config(str(path))
    results = run_training(args, tasks)
    assert results["tasks"] == ["topic"] and results["accuracy_matrix"][0][0] is not None
    # The per-class sample taken from the stream: 6 x 3 classes = 18 rows, 2 batches of 16 per epoch.
    assert results["curves"]["topic"]["mask"][-1]["step"] == 2
    args.train_samples_per_class = None
    args.overwrite_output_dir = True
    with pytest.raises(ValueError, match="is streamed: set train_samples_per_class"):
        run_training(args, tasks)


# --- 3, 4, 6: trackers, callbacks, logs -----------------------------------------------------------------------
def test_tensorboard_events_and_a_transformers_callback(tiny_model_dir, tmp_path):
    import logging

    from transformers import TrainerCallback as HFTrainerCallback

    from exssnet_nlp.training import ContinualCallback

    class HFStyle(HFTrainerCallback):
        pass

    class Events(ContinualCallback):
        def __init__(self):
            self.seen = []

        def on_task_end(self, trainer, task):
            self.seen.append(task)

    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    topic = write_task(tmp_path / "data", "topic", WORDS["topic"], n_train=10, n_test=6)
    args = make_args(tiny_model_dir, tmp_path / "run", "exssnet", mask_epochs=1, weight_epochs=1, report_to="tensorboard",
                     logging_steps=1)
    events = Events()
    # transformers' callback is refused with a message, not a missing-argument crash mid-run.
    with pytest.raises(ValueError, match=r"callbacks \['HFStyle'\] are not exssnet_nlp.ContinualCallback"):
        ContinualTrainer(build_model(args), args, [topic], callbacks=[events, HFStyle()])
    ContinualTrainer(build_model(args), args, [topic], callbacks=[events]).train()
    assert events.seen == ["topic"]
    assert (root.level, list(root.handlers)) == before  # the library configured no handler and no level
    files = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in files:
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"topic/mask/loss", "topic/weight/validation_accuracy", "final/average_accuracy"} <= tags, tags
    assert any(t.startswith("accuracy_after_01_topic/") for t in tags), tags
    assert (tmp_path / "run" / "learning_curves.png").stat().st_size > 0


def test_report_to_is_checked():
    from exssnet_nlp.training import ContinualTrainingArguments

    with pytest.raises(ValueError, match="unknown tracker"):
        ContinualTrainingArguments(model_name_or_path="x", report_to="tensorbord")
    assert ContinualTrainingArguments(model_name_or_path="x", report_to="TensorBoard, wandb").report_to == "tensorboard,wandb"


# --- 5: the command line -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export", "push", "methods"])
def test_every_subcommand_has_help(command, capsys):
    import re

    from exssnet_nlp.cli import main

    try:
        code = main([command, "--help"])
    except SystemExit as done:  # argparse's own --help exits
        code = done.code
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: exssnet-nlp {command}")
    # Every flag has help text (more than argparse's bare "(default: ...)").
    for block in re.split(r"\n(?=  -)", out.split("options:", 1)[1]):
        if block.strip().startswith("-"):
            text = " ".join(block.split())
            described = re.sub(r"^\S+( [A-Z_]+(\s\[[A-Z_ .]+\])*| \{[^}]*\}| \[\w+\])?(, --?\S+)?", "", text)
            assert re.sub(r"\(default: [^)]*\)", "", described).strip(), f"{command}: flag without help: {text!r}"
    if command == "train":
        flat = " ".join(out.split())
        assert "--config" in flat and "all | attention | ffn" in flat and "pkg:" in flat and "--report_to" in flat


def test_top_level_help_version_and_no_abbreviations(capsys, tmp_path):
    from exssnet_nlp.cli import main

    assert main(["--help"]) == 0 and "COMMAND" in capsys.readouterr().out
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("exssnet-nlp 0.")
    assert main(["trian"]) == 2 and "invalid choice: 'trian'" in capsys.readouterr().err
    # `--mask_epoch` used to be read as --mask_epochs.
    assert main(["train", "--model_name_or_path", "x", "--tasks", "ag_news", "--mask_epoch", "2"]) == 2
    assert "--mask_epoch" in capsys.readouterr().err


def test_importing_the_package_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, exssnet_nlp, exssnet_nlp.cli; print('torch' in sys.modules, exssnet_nlp.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and out[1] == __import__("exssnet_nlp").__version__
