"""The multitask reference (every task at once) and the restart of a task whose first phase ends at chance."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_args

from exssnet_nlp import load_pretrained
from exssnet_nlp.training import ContinualCallback, ContinualTrainer, build_model
from exssnet_nlp.training.arguments import ContinualTrainingArguments
from exssnet_nlp.training.joint import JOINT

pytestmark = pytest.mark.usefixtures("one_thread")


class Events(ContinualCallback):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_task_begin(self, trainer, task):
        self.seen.append(("begin", task))

    def on_task_end(self, trainer, task):
        self.seen.append(("end", task))


def test_multitask_trains_every_head_on_mixed_batches(tiny_model_dir, small_tasks, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / "mt", "multitask", weight_epochs=3, dense_learning_rate=1e-3)
    model = build_model(args)
    events = Events()
    trainer = ContinualTrainer(model, args, small_tasks, callbacks=[events])
    batches = []
    original = model.forward

    def spy(*a, task=None, **kw):
        batches.append(task)
        return original(*a, task=task, **kw)

    model.forward = spy
    results = trainer.train()
    # Training saw batches holding both tasks' examples (one task name per example).
    mixed = [t for t in batches if isinstance(t, list) and len(set(t)) == 2]
    assert mixed, "no batch mixed the two tasks"
    assert events.seen == [("begin", JOINT), ("end", JOINT)]
    assert results["accuracy_matrix"][0] == [None, None] and all(v is not None for v in results["accuracy_matrix"][1])
    assert results["bwt"] is None and results["forgetting"] is None and results["fwt"] is None
    assert results["average_accuracy"] == pytest.approx(sum(results["accuracy_matrix"][1]) / 2)
    assert list(results["curves"]) == [JOINT] and results["curves"][JOINT]["train"]
    assert set(results["storage"]["per_task"]) == {"topic", "sentiment"}
    assert not trainer.model.trainable_parameters(), "a finished joint run leaves nothing trainable"
    # Both heads moved away from their seeded init, and the checkpoint reproduces the trained model.
    fresh = build_model(args)
    for i, name in enumerate(("topic", "sentiment")):
        fresh.add_task(name, (3, 2)[i])
        fresh.begin_phase("train")
        trained = trainer.model.heads[str(i)].state_dict()
        assert any(not torch.equal(v, trained[k]) for k, v in fresh.heads[str(i)].state_dict().items()), name
        fresh.finish_task()
    loaded = load_pretrained(str(tmp_path / "mt" / "checkpoint"))
    ids = torch.randint(5, 100, (4, 8))
    for task in ("topic", "sentiment"):
        with torch.no_grad():
            assert torch.equal(loaded.eval()(ids, torch.ones_like(ids), task=task).logits,
                               trainer.model.eval()(ids, torch.ones_like(ids), task=task).logits)


def test_a_task_stuck_at_chance_is_restarted_and_recorded(tiny_model_dir, small_tasks, tmp_path):
    # A margin of 1 makes every first phase "stuck": the restart path runs deterministically.
    args = make_args(tiny_model_dir, tmp_path / "stuck", "exssnet", mask_epochs=1, weight_epochs=1, stuck_margin=1.0,
                     restart_stuck_tasks=1)
    results = ContinualTrainer(build_model(args), args, small_tasks).train()
    for task in ("topic", "sentiment"):
        records = results["restarts"][task]
        assert [r["attempt"] for r in records] == [0, 1] and [r["restarted"] for r in records] == [True, False]
        assert records[0]["phase"] == "mask" and records[0]["chance"] == pytest.approx(1 / (3 if task == "topic" else 2))
    assert json.loads((tmp_path / "stuck" / "results.json").read_text())["restarts"] == results["restarts"]
    assert results["bwt"] == 0.0  # a restart discards only the learning task: finished ones are untouched
    # Off: the stuck phase is kept, and said so.
    args = make_args(tiny_model_dir, tmp_path / "off", "exssnet", mask_epochs=1, weight_epochs=1, stuck_margin=1.0,
                     restart_stuck_tasks=0)
    results = ContinualTrainer(build_model(args), args, small_tasks).train()
    assert [r["restarted"] for r in results["restarts"]["topic"]] == [False]
    # Default settings on tasks whose first phase learns: nothing is restarted or recorded.
    args = make_args(tiny_model_dir, tmp_path / "learns", "exssnet", weight_epochs=1)
    results = ContinualTrainer(build_model(args), args, small_tasks).train()
    assert all(points[-1]["accuracy"] > 0.55 for points in (c["mask"] for c in results["curves"].values()))
    assert results["restarts"] == {}


@pytest.mark.parametrize("field,value", [("restart_stuck_tasks", -1), ("restart_stuck_tasks", 1.5), ("stuck_margin", 2.0),
                                         ("stuck_margin", float("nan"))])
def test_bad_restart_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        ContinualTrainingArguments(model_name_or_path="x", **{field: value})


def test_a_setting_added_after_a_run_started_does_not_block_its_resume():
    from exssnet_nlp.training.arguments import resume_differences

    now = ContinualTrainingArguments(model_name_or_path="x").to_dict()
    saved = {k: v for k, v in now.items() if k not in ("restart_stuck_tasks", "stuck_margin")}
    assert resume_differences(saved, now) == []
    changed = {**now, "restart_stuck_tasks": 0}
    assert resume_differences(saved, changed) == ["restart_stuck_tasks: None -> 0"]


def test_a_resumed_run_counts_steps_and_finishes_after_the_last_save(tiny_model_dir, small_tasks, tmp_path):
    """The trackers' step continues across a resume; a run killed after its last save (before results.json) finishes."""
    from conftest import CrashAfterFirstTask

    class CrashAtEnd(ContinualCallback):
        def on_task_end(self, trainer, task):
            if task == trainer.task_names[-1]:
                raise RuntimeError("simulated crash")

    args = make_args(tiny_model_dir, tmp_path / "full", "exssnet", mask_epochs=1, weight_epochs=1)
    full = ContinualTrainer(build_model(args), args, small_tasks)
    expected = full.train()
    args = make_args(tiny_model_dir, tmp_path / "crash", "exssnet", mask_epochs=1, weight_epochs=1)
    for crash in (CrashAfterFirstTask(), CrashAtEnd()):
        with pytest.raises(RuntimeError, match="simulated crash"):
            ContinualTrainer(build_model(args), args, small_tasks, callbacks=[crash]).train()
    assert not (tmp_path / "crash" / "results.json").exists()
    resumed = ContinualTrainer(build_model(args), args, small_tasks)
    assert resumed.train()["accuracy_matrix"] == expected["accuracy_matrix"]
    assert resumed.global_step == full.global_step > 0


@pytest.mark.parametrize("weight_phase,kept", [((0.9, 0.5, 0.6), 0), ((0.5, 0.6, 0.9), "end"), ((0.5, 0.9, 0.9), "end")])
def test_load_best_in_phase_keeps_the_best_validation_point(tiny_model_dir, small_tasks, tmp_path, monkeypatch, weight_phase, kept):
    """Validation accuracy at the start, middle and end of each phase (scripted): a weight phase whose start is
    strictly best is undone (every trained tensor back to the mask phase's result); otherwise its end stays."""
    real = ContinualTrainer.evaluate
    script = iter([0.3, 0.4, 0.5, *weight_phase])  # the mask phase learns; then the weight phase under test

    def evaluate(self, task, split="test"):
        return next(script) if split == "validation" else real(self, task, split)

    class Snapshots(ContinualCallback):
        def __init__(self):
            self.at, self.metrics = {}, {}

        def on_phase_end(self, trainer, task, phase, metrics):
            self.at[phase] = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
            self.metrics[phase] = metrics

    monkeypatch.setattr(ContinualTrainer, "evaluate", evaluate)
    args = make_args(tiny_model_dir, tmp_path / "best", "exssnet", mask_epochs=1, weight_epochs=1, load_best_in_phase=True)
    snapshots = Snapshots()
    results = ContinualTrainer(build_model(args), args, small_tasks[:1], callbacks=[snapshots]).train()
    mask, weight = snapshots.metrics["mask"], snapshots.metrics["weight"]
    assert mask["best_step"] == mask["steps"] and mask["validation_accuracy"] == 0.5
    assert [p["step"] for p in results["curves"]["topic"]["weight"]][0] == 0  # the start is a point of the curve
    unchanged = all(torch.equal(v, snapshots.at["weight"][k]) for k, v in snapshots.at["mask"].items())
    assert weight["best_step"] == (weight["steps"] if kept == "end" else kept)
    assert weight["validation_accuracy"] == max(weight_phase) and unchanged == (kept == 0)
