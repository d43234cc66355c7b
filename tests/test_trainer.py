"""The trainer end to end on tiny encoders and tiny local jsonl tasks: every method, errors, CLI, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import WORDS, CrashAfterFirstTask, make_args, write_task

from exssnet_nlp import ExSSNetModel
from exssnet_nlp.cli import main
from exssnet_nlp.training import ContinualCallback, ContinualTrainer, build_model, load_training_config
from exssnet_nlp.training.loop import learning_rate

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("data")
    return [write_task(root, "topic", WORDS["topic"]), write_task(root, "sentiment", WORDS["sentiment"], seed=1)]


class Recorder(ContinualCallback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_task_begin(self, trainer, task):
        self.events.append(("task_begin", task))

    def on_phase_end(self, trainer, task, phase, metrics):
        self.events.append(("phase_end", task, phase))

    def on_evaluate(self, trainer, task, accuracies):
        self.events.append(("evaluate", task, tuple(accuracies)))

    def on_task_end(self, trainer, task):
        self.events.append(("task_end", task))


@pytest.mark.parametrize("method", ["exssnet", "supsup", "ssnet", "finetune", "independent"])
def test_trainer_end_to_end(method, tiny_model_dir, tasks, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / method, method)
    recorder = Recorder()
    trainer = ContinualTrainer(build_model(args), args, tasks, callbacks=[recorder])
    results = trainer.train()
    on_disk = json.loads((tmp_path / method / "results.json").read_text())
    for key in ("tasks", "method", "accuracy_matrix", "average_accuracy", "bwt", "forgetting", "fwt", "capacity", "timings", "config"):
        assert key in on_disk, key
    assert on_disk["tasks"] == ["topic", "sentiment"] and on_disk["method"] == method
    matrix = results["accuracy_matrix"]
    assert matrix[0][0] is not None and matrix[0][1] is not None and matrix[1][0] is not None
    assert (tmp_path / method / "accuracy_matrix.png").stat().st_size > 0
    if method in ("exssnet", "supsup", "independent"):
        assert results["bwt"] == 0.0 and results["forgetting"] == 0.0
        assert matrix[1][0] == matrix[0][0]
    if method in ("exssnet", "ssnet", "supsup"):
        assert results["capacity"] is not None
    phases = {"exssnet": ["mask", "weight"], "ssnet": ["mask", "weight"], "supsup": ["mask"]}.get(method, ["train"])
    assert [e[2] for e in recorder.events if e[0] == "phase_end" and e[1] == "topic"] == phases
    assert recorder.events[0] == ("task_begin", "topic") and recorder.events[-1] == ("task_end", "sentiment")
    curve = results["curves"]["topic"][phases[0]]
    # a phase that keeps its best point (exssnet's default from density 0.3; here 0.2) records its start too
    assert len(curve) == 2 + args.load_best_in_phase and curve[-1]["fraction"] == 1.0
    assert results["storage"]["stored_bytes"] > 0


def test_exssnet_learns_the_synthetic_tasks(tiny_model_dir, tasks, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / "learn", "exssnet", mask_epochs=4, weight_epochs=4)
    results = ContinualTrainer(build_model(args), args, tasks).train()
    final = results["accuracy_matrix"][-1]
    assert final[0] > 0.6 and final[1] > 0.7, final  # chance: 0.33 and 0.5


def test_refuses_finished_output_dir(tiny_model_dir, tasks, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / "done", "supsup", mask_epochs=1)
    ContinualTrainer(build_model(args), args, tasks[:1]).train()
    with pytest.raises(ValueError, match="already holds a finished run"):
        ContinualTrainer(build_model(args), args, tasks[:1])
    args.overwrite_output_dir = True
    ContinualTrainer(build_model(args), args, tasks[:1]).train()
    # An overwriting run that crashes leaves no stale results behind, so re-running it resumes.
    with pytest.raises(RuntimeError, match="simulated crash"):
        ContinualTrainer(build_model(args), args, tasks, callbacks=[CrashAfterFirstTask()]).train()
    assert not (tmp_path / "done" / "results.json").exists()
    args.overwrite_output_dir = False
    assert ContinualTrainer(build_model(args), args, tasks).train()["tasks"] == ["topic", "sentiment"]


def test_bad_input_fails_before_training(tiny_model_dir, tasks, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / "bad", "exssnet")
    model = build_model(args)
    with pytest.raises(ValueError, match="does not exist|not found|missing"):
        ContinualTrainer(model, args, [tasks[0], {"name": "x", "train_file": str(tmp_path / "nope.jsonl"),
                                                  "test_file": str(tmp_path / "nope.jsonl")}])
    with pytest.raises(ValueError, match="unknown task|Unknown task"):
        ContinualTrainer(model, args, ["no_such_task"])
    bad = tmp_path / "bad_labels"
    bad.mkdir()
    (bad / "train.jsonl").write_text("".join(json.dumps({"text": "a b", "label": i % 3}) + "\n" for i in range(9)))
    with pytest.raises(ValueError, match="num_labels|range|outside"):
        ContinualTrainer(model, args, [{"name": "b", "train_file": str(bad / "train.jsonl"), "test_file": str(bad / "train.jsonl"),
                                        "num_labels": 2}])
    (bad / "nolabel.jsonl").write_text("".join(json.dumps({"text": "a b", "y": 0}) + "\n" for _ in range(4)))
    with pytest.raises(ValueError, match="label"):
        ContinualTrainer(model, args, [{"name": "c", "train_file": str(bad / "nolabel.jsonl"), "test_file": str(bad / "nolabel.jsonl")}])
    (bad / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty|no rows|Empty"):
        ContinualTrainer(model, args, [{"name": "d", "train_file": str(bad / "empty.jsonl"), "test_file": tasks[0]["test_file"]}])
    assert not (tmp_path / "bad").exists()  # nothing was trained or written
    with pytest.raises(ValueError, match="density"):
        make_args(tiny_model_dir, tmp_path, "exssnet", density=1.5)
    with pytest.raises(ValueError, match="method"):
        make_args(tiny_model_dir, tmp_path, "packnet")
    with pytest.raises(ValueError, match="mask_learning_rate=0 must be a finite positive number"):
        make_args(tiny_model_dir, tmp_path, "exssnet", mask_learning_rate=0)


def test_dense_baselines_have_their_own_learning_rate(tiny_model_dir, tasks, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / "a", "independent", weight_learning_rate=1e-3)
    trainer = ContinualTrainer(build_model(args), args, tasks[:1])
    (phase,) = trainer.model.phases()
    assert learning_rate(trainer.args, phase.learning_rate, phase.name) == 1e-3  # default: the weight phase's
    args = make_args(tiny_model_dir, tmp_path / "b", "independent", weight_learning_rate=1e-3, dense_learning_rate=2e-5)
    trainer = ContinualTrainer(build_model(args), args, tasks[:1])
    assert learning_rate(trainer.args, phase.learning_rate, phase.name) == 2e-5


def test_phase_epochs_default_to_the_methods_measured_ones(tmp_path):
    """Unset epochs resolve per method (supsup: 4 mask epochs, the grid's best for it; else 2 + 2) and are recorded
    resolved; a value the run sets, on the command line or as YAML null, is the run's."""
    from exssnet_nlp.training import ContinualTrainingArguments

    for method, expected in (("supsup", (4.0, 2.0)), ("exssnet", (2.0, 2.0)), ("wsn", (2.0, 2.0)), ("lora", (2.0, 2.0))):
        args = ContinualTrainingArguments(model_name_or_path="x", method=method)
        assert (args.mask_epochs, args.weight_epochs) == expected, method
        assert args.to_dict()["mask_epochs"] == expected[0]
    assert ContinualTrainingArguments(model_name_or_path="x", method="supsup", mask_epochs=1).mask_epochs == 1
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "x", "method": "supsup", "mask_epochs": None, "tasks": ["ag_news"]}))
    assert load_training_config(str(path), [])[0].mask_epochs == 4
    assert load_training_config(str(path), ["--mask_epochs", "3"])[0].mask_epochs == 3
    # A run saved with other epochs (1 + 1, the former default) resumes with them when the command leaves them unset.
    from exssnet_nlp.training.arguments import resume_differences
    from exssnet_nlp.training.resume import _keep_saved_settings

    saved = {**ContinualTrainingArguments(model_name_or_path="x", method="exssnet").to_dict(), "mask_epochs": 1.0,
             "weight_epochs": 1.0}
    now = ContinualTrainingArguments(model_name_or_path="x", method="exssnet")
    _keep_saved_settings(saved, now)
    assert (now.mask_epochs, now.weight_epochs) == (1.0, 1.0) and resume_differences(saved, now.to_dict()) == []
    explicit = ContinualTrainingArguments(model_name_or_path="x", method="exssnet", mask_epochs=3)
    _keep_saved_settings(saved, explicit)
    assert resume_differences(saved, explicit.to_dict()) == ["mask_epochs: 1.0 -> 3"]
    from exssnet_nlp.methods import register_method
    from exssnet_nlp.methods.dense.config import DenseConfig

    with pytest.raises(ValueError, match="only mask_epochs, weight_epochs, load_best_in_phase, weight_learning_rate have"):
        register_method("bad_epochs", DenseConfig, "x:Y", trainer_defaults={"head_epochs": 3})


def test_exssnet_keeps_each_phases_best_point_by_default_where_it_helped(tmp_path):
    """load_best_in_phase resolves per method and, for exssnet, per density (grid: on at 0.5, +0.97, and at 0.3,
    +0.71; off at 0.1, -0.72; every other method: off), a value the run sets is the run's, and a run saved with it off
    resumes with it off when the command leaves it unset."""
    from exssnet_nlp.methods.supermask import BEST_IN_PHASE_FROM_DENSITY
    from exssnet_nlp.training import ContinualTrainingArguments
    from exssnet_nlp.training.arguments import resume_differences
    from exssnet_nlp.training.resume import _keep_saved_settings

    for method, expected in (("exssnet", True), ("ssnet", False), ("supsup", False), ("wsn", False), ("lora", False)):
        args = ContinualTrainingArguments(model_name_or_path="x", method=method)
        assert args.load_best_in_phase is expected and args.to_dict()["load_best_in_phase"] is expected, method
    for density, expected in ((0.05, False), (0.1, False), (BEST_IN_PHASE_FROM_DENSITY, True), (0.5, True), (0.7, True)):
        args = ContinualTrainingArguments(model_name_or_path="x", method="exssnet", method_config={"density": density})
        assert args.load_best_in_phase is expected and "load_best_in_phase" in args.defaulted, density
    assert ContinualTrainingArguments(model_name_or_path="x", method="exssnet", method_config={"density": 0.1},
                                      load_best_in_phase=True).load_best_in_phase is True
    assert ContinualTrainingArguments(model_name_or_path="x", method="supsup", method_config={"density": 0.5}).load_best_in_phase is False
    assert ContinualTrainingArguments(model_name_or_path="x", method="exssnet", load_best_in_phase=False).load_best_in_phase is False
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "x", "method": "exssnet", "tasks": ["ag_news"]}))
    assert load_training_config(str(path), [])[0].load_best_in_phase is True
    assert load_training_config(str(path), ["--load_best_in_phase", "false"])[0].load_best_in_phase is False
    assert load_training_config(str(path), ["--density", "0.1"])[0].load_best_in_phase is False  # the CLI's density
    with pytest.raises(ValueError, match="load_best_in_phase='yes' must be true or false"):
        ContinualTrainingArguments(model_name_or_path="x", method="exssnet", load_best_in_phase="yes")
    saved = {**ContinualTrainingArguments(model_name_or_path="x", method="exssnet").to_dict(), "load_best_in_phase": False}
    now = ContinualTrainingArguments(model_name_or_path="x", method="exssnet")
    _keep_saved_settings(saved, now)
    assert now.load_best_in_phase is False and resume_differences(saved, now.to_dict()) == []
    explicit = ContinualTrainingArguments(model_name_or_path="x", method="exssnet", load_best_in_phase=True)
    _keep_saved_settings(saved, explicit)
    assert resume_differences(saved, explicit.to_dict()) == ["load_best_in_phase: False -> True"]


def test_weight_training_methods_default_to_the_weight_lr_the_grid_measured(tiny_model_dir, tasks, tmp_path):
    """exssnet, ssnet and wsn train owned values at 1e-3 (every grid figure of theirs); the dense methods and osf,
    which fall back to weight_learning_rate, keep 5e-5; a value the run sets wins; a run saved with 5e-5 resumes with it."""
    from exssnet_nlp.training import ContinualTrainingArguments
    from exssnet_nlp.training.arguments import resume_differences
    from exssnet_nlp.training.resume import _keep_saved_settings

    for method, expected in (("exssnet", 1e-3), ("ssnet", 1e-3), ("wsn", 1e-3), ("supsup", 5e-5), ("finetune", 5e-5),
                             ("independent", 5e-5), ("osf", 5e-5), ("lora", 5e-5)):
        args = ContinualTrainingArguments(model_name_or_path="x", method=method)
        assert args.weight_learning_rate == expected and args.to_dict()["weight_learning_rate"] == expected, method
    assert ContinualTrainingArguments(model_name_or_path="x", method="wsn", weight_learning_rate=2e-4).weight_learning_rate == 2e-4
    args = make_args(tiny_model_dir, tmp_path / "d", "finetune", weight_learning_rate=None)
    (phase,) = ContinualTrainer(build_model(args), args, tasks[:1]).model.phases()
    assert learning_rate(args, phase.learning_rate, phase.name) == 5e-5  # dense: its own LR, not exssnet's 1e-3
    saved = {**ContinualTrainingArguments(model_name_or_path="x", method="exssnet").to_dict(), "weight_learning_rate": 5e-5}
    now = ContinualTrainingArguments(model_name_or_path="x", method="exssnet")
    _keep_saved_settings(saved, now)
    assert now.weight_learning_rate == 5e-5 and resume_differences(saved, now.to_dict()) == []
    explicit = ContinualTrainingArguments(model_name_or_path="x", method="exssnet", weight_learning_rate=1e-3)
    _keep_saved_settings(saved, explicit)
    assert resume_differences(saved, explicit.to_dict()) == ["weight_learning_rate: 5e-05 -> 0.001"]


def test_yaml_config_and_cli_overrides(tiny_model_dir, tasks, tmp_path):
    config = {"model_name_or_path": tiny_model_dir, "method": "exssnet", "density": 0.1, "tasks": tasks,
              "mask_epochs": 1, "weight_epochs": 1, "per_device_train_batch_size": 16, "max_length": 16, "pooling": "mean",
              "output_dir": str(tmp_path / "yaml"), "kkt": {"mode": "off"}, "disable_tqdm": True}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    args, task_list = load_training_config(str(path), ["--density", "0.3", "--seed", "7"])
    assert args.method_config.density == 0.3 and args.seed == 7 and args.method_config.seed == 7
    # A list flag takes `null` as YAML does (every linear), a preset, or suffixes.
    for flag, meant in ((["null"], None), (["all"], "all"), (["query", "value"], ["query", "value"])):
        assert load_training_config(str(path), ["--target_modules", *flag])[0].method_config.target_modules == meant
    assert args.mask_epochs == 1 and len(task_list) == 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "learning_rat": 1}))
    with pytest.raises(ValueError, match="unknown setting"):
        load_training_config(str(tmp_path / "bad.yaml"), [])
    assert main(["train", "--config", str(path), "--density", "0.3"]) == 0
    results = json.loads((tmp_path / "yaml" / "results.json").read_text())
    assert results["config"]["method_config"]["density"] == 0.3 and results["bwt"] == 0.0
    # The same command again refuses to overwrite the finished run, with a one-line error.
    assert main(["train", "--config", str(path)]) == 2


def test_issue_example_config_works_as_written(tiny_model_dir, tmp_path):
    """The YAML from the trainer issue, paths aside: a named task with files plus a local task."""
    ag = ROOT.parent / "shared" / "data" / "webnlp" / "ag_news"
    data = write_task(tmp_path, "my_sentiment", WORDS["sentiment"])
    config = f"""
model_name_or_path: {tiny_model_dir}
method: exssnet
density: 0.1
tasks:
  - name: ag_news
    train_file: {ag / 'train.jsonl'}
    test_file: {ag / 'test.jsonl'}
  - name: my_sentiment
    train_file: {data['train_file']}
    test_file: {data['test_file']}
    text_column: text
    label_column: label
train_samples_per_class: 8
eval_samples_per_class: 10
max_length: 32
per_device_train_batch_size: 16
mask_epochs: 1
weight_epochs: 1
output_dir: {tmp_path / 'example'}
seed: 0
"""
    (tmp_path / "example.yaml").write_text(config)
    assert main(["train", "--config", str(tmp_path / "example.yaml"), "--disable_tqdm", "true"]) == 0
    results = json.loads((tmp_path / "example" / "results.json").read_text())
    assert results["tasks"] == ["ag_news", "my_sentiment"]


def test_two_process_run(tiny_model_dir, tasks, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo): finishes, ranks agree bit for bit, results written once."""
    config = {"model_name_or_path": tiny_model_dir, "method": "exssnet", "density": 0.2, "tasks": tasks,
              "mask_epochs": 1, "weight_epochs": 1, "per_device_train_batch_size": 8, "max_length": 16,
              "output_dir": str(tmp_path / "ddp"), "disable_tqdm": True}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "EXSSNET_TEST_FINGERPRINT_DIR": str(tmp_path / "ddp")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "tests" / "ddp_train.py"), "--config", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    prints = [json.loads((tmp_path / "ddp" / f"fingerprint_rank{r}.json").read_text()) for r in (0, 1)]
    assert prints[0]["num_processes"] == 2
    assert prints[0]["tensors"] == prints[1]["tensors"]
    assert len(list((tmp_path / "ddp").glob("results*.json"))) == 1


def test_resume_after_crash_equals_uninterrupted_run(tiny_model_dir, tasks, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / "full", "exssnet", mask_epochs=1, weight_epochs=1)
    full = ContinualTrainer(build_model(args), args, tasks).train()
    args = make_args(tiny_model_dir, tmp_path / "crash", "exssnet", mask_epochs=1, weight_epochs=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ContinualTrainer(build_model(args), args, tasks, callbacks=[CrashAfterFirstTask()]).train()
    assert (tmp_path / "crash" / "checkpoint").is_dir() and not (tmp_path / "crash" / "results.json").exists()
    # Re-running the same command on the same output_dir continues at the next task.
    resumed = ContinualTrainer(build_model(args), args, tasks).train()
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["untrained_accuracy"] == full["untrained_accuracy"]
    for key in ("average_accuracy", "bwt", "forgetting", "fwt"):
        assert resumed[key] == full[key], key


def test_cli_checkpoint_commands(tiny_model_dir, tasks, tmp_path, capsys):
    config = {"model_name_or_path": tiny_model_dir, "method": "exssnet", "density": 0.2, "tasks": tasks, "pooling": "cls",
              "mask_epochs": 1, "weight_epochs": 1, "max_length": 16, "output_dir": str(tmp_path / "run"), "disable_tqdm": True}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    ckpt = str(tmp_path / "run" / "checkpoint")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ckpt, "--config", str(path)]) == 0
    accuracies = json.loads(capsys.readouterr().out)
    assert accuracies == {"topic": results["accuracy_matrix"][-1][0], "sentiment": results["accuracy_matrix"][-1][1]}
    assert main(["predict", "--checkpoint", ckpt, "--task", "sentiment", "great love best", "awful hate"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and {"text", "label", "score"} <= set(lines[0])
    assert main(["export", "--checkpoint", ckpt, "--task", "topic", "--output", str(tmp_path / "exported")]) == 0
    from transformers import AutoModelForSequenceClassification

    exported = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "exported"))
    assert exported.config.num_labels == 3
    assert main(["export", "--checkpoint", ckpt, "--task", "nope", "--output", str(tmp_path / "x")]) == 2
    assert "nope" in capsys.readouterr().err


def test_trainer_kkt_picks_the_matching_earlier_task(tiny_model_dir, tasks, tmp_path):
    """A, B, A' (A's data again): the trainer's KKT starts A' from A, records it, and forgets nothing."""
    again = {**tasks[0], "name": "topic_again"}
    args = make_args(tiny_model_dir, tmp_path / "kkt", "exssnet", kkt_mode="best", mask_epochs=3, weight_epochs=1)
    results = ContinualTrainer(build_model(args), args, [tasks[0], tasks[1], again]).train()
    record = results["kkt"]["topic_again"]
    assert record["sources"] == ["topic"], record
    assert set(record["knn_accuracy"]) == {"topic", "sentiment"} and record["seconds"] >= 0
    assert results["bwt"] == 0.0


def test_task_norms_and_reuse_score_scale_from_the_command_line(tiny_model_dir, tasks, tmp_path):
    config = {"model_name_or_path": tiny_model_dir, "method": "exssnet", "density": 0.2, "tasks": tasks,
              "mask_epochs": 1, "weight_epochs": 1, "per_device_train_batch_size": 16, "max_length": 16, "pooling": "mean",
              "output_dir": str(tmp_path / "run"), "disable_tqdm": True}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    args, _ = load_training_config(str(path), ["--task_norms", "true", "--reuse_score_scale", "0.5"])
    assert args.method_config.task_norms and args.method_config.reuse_score_scale == 0.5
    assert main(["train", "--config", str(path), "--task_norms", "true", "--reuse_score_scale", "0.5"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["bwt"] == 0.0 and results["forgetting"] == 0.0
    assert all(s["norm"] > 0 for s in results["storage"]["per_task"].values())
    loaded = ExSSNetModel.from_pretrained(str(tmp_path / "run" / "checkpoint"))
    assert loaded.config.task_norms and loaded.config.reuse_score_scale == 0.5 and len(loaded.task_norm_layers()) > 0
    with pytest.raises(ValueError, match="reuse_score_scale"):
        load_training_config(str(path), ["--reuse_score_scale", "2"])


@pytest.mark.parametrize("config", sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")))
def test_shipped_configs_load(config, tiny_model_dir):
    args, task_list = load_training_config(str(Path(__file__).parents[1] / "configs" / config), [])
    names = [t if isinstance(t, str) else t["name"] for t in task_list]
    assert names and len(set(names)) == len(names) and args.tasks == names
    # the config's mask settings resolve against a BERT-family encoder (the configs' encoders are all BERTs)
    model = build_model(args, encoder=tiny_model_dir)
    assert model.method == args.method and model.config == args.method_config


def test_mask_phase_optimizer_and_schedule_are_settings(tiny_model_dir, tasks, tmp_path, monkeypatch):
    """SupSup trains scores with SGD (momentum 0.9) on a cosine schedule: the mask phase can too; weight phases keep AdamW."""
    import exssnet_nlp.training.loop as loop

    made = []
    real = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda name, *a, **k: made.append(name) or real(name, *a, **k))
    args = make_args(tiny_model_dir, tmp_path / "sgd", "exssnet", mask_optimizer="sgd", mask_lr_scheduler="cosine",
                     mask_learning_rate=0.1, mask_epochs=1, weight_epochs=1)
    results = ContinualTrainer(build_model(args), args, tasks[:1]).train()
    assert made == ["sgd", "adamw"] and results["config"]["mask_optimizer"] == "sgd"
    optimizer = real("sgd", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], 0.1, 0.0)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="mask_optimizer='adam' is not valid"):
        make_args(tiny_model_dir, tmp_path, "exssnet", mask_optimizer="adam")


def test_help_gives_the_default_a_run_uses_for_kkt():
    """A run transfers only when asked, so `--help` says off (KKTConfig's own default, best, is what asking gets)."""
    from exssnet_nlp.training.arguments import argument_parser

    assert "such mask) | off. (default: off)" in " ".join(argument_parser("exssnet").format_help().split())
    assert load_training_config(None, ["--tasks", "t"])[0].kkt.mode == "off"


@pytest.mark.parametrize("name", ["cpu", "load_best_in_phase", "save_checkpoints"])
def test_a_yes_no_setting_must_be_a_boolean(name):
    from exssnet_nlp.training import ContinualTrainingArguments

    with pytest.raises(ValueError, match=f"{name}='yes' must be true or false"):
        ContinualTrainingArguments(model_name_or_path="x", **{name: "yes"})
