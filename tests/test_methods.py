"""One table of checks run over every registered method: the contract, zero forgetting, save/load, resume, CLI.

A method added to the registry is tested here without editing this file.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from conftest import CrashAfterFirstTask, make_args, random_batch, tiny_encoder, train_steps

from exssnet_nlp import load_pretrained, method_names
from exssnet_nlp.cli import main
from exssnet_nlp.methods import get_method
from exssnet_nlp.training import ContinualTrainer, build_model

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = method_names()
# What each method promises; a new method must say where it stands by joining one of these lists.
ISOLATING = {"exssnet", "supsup", "wsn", "lora", "independent"}
FORGETTING = {"ssnet", "finetune", "osf"}
JOINT = {"multitask"}  # not continual: every task at once (the reference)


def small_config(name: str) -> dict:
    """Settings that make every method learn something on a tiny encoder."""
    fields = {f.name for f in get_method(name).config_fields()}
    return {"density": 0.3} if "density" in fields else {}


def learn(model, name: str, batch, steps: int = 2) -> None:
    model.add_task(name, 3)
    for phase in model.phases():
        model.begin_phase(phase.name)
        train_steps(model, batch, steps, lr=1e-2, weight_decay=0.1)
    model.finish_task()


def logits(model, batch, task: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch[0], batch[1], task=task).logits


def test_every_method_is_classified():
    assert set(METHODS) == ISOLATING | FORGETTING | JOINT, "add the new method to ISOLATING, FORGETTING or JOINT"
    for name in METHODS:
        model_class = get_method(name).model_class
        assert get_method(name).description, name
        assert callable(model_class.phases) and callable(model_class.task_state), name
        assert model_class.learns_jointly == (name in JOINT), name


@pytest.mark.parametrize("name", METHODS)
def test_contract_isolation_and_round_trip(name, tmp_path):
    spec = get_method(name)
    model = spec.build(tiny_encoder("bert"), small_config(name))
    assert model.method == name and model.isolates_tasks == (name in ISOLATING)
    batch = random_batch()
    learn(model, "A", batch)
    before = logits(model, batch, "A")
    learn(model, "B", random_batch(seed=1))
    after = logits(model, batch, "A")
    if name in ISOLATING:
        assert torch.equal(before, after), f"{name} changed a finished task"
    # A learned task leaves nothing trainable behind.
    assert not model.trainable_parameters()
    storage = model.task_storage_bytes("B")
    assert storage["total"] == sum(v for k, v in storage.items() if k != "total") > 0 and storage["head"] > 0
    # discard_task leaves finished tasks as they were.
    model.add_task("C", 2)
    model.discard_task()
    assert model.tasks == ["A", "B"] and torch.equal(logits(model, batch, "A"), after)
    # save -> load installs every task and reproduces its logits exactly.
    model.save_pretrained(str(tmp_path / "ckpt"))
    loaded = load_pretrained(str(tmp_path / "ckpt"), encoder=tiny_encoder("bert"))
    assert loaded.method == name and loaded.tasks == ["A", "B"] and type(loaded) is type(model)
    for task in ("A", "B"):
        assert torch.equal(logits(loaded, batch, task), logits(model, batch, task)), (name, task)
    # A loaded model keeps learning: its old tasks stay put (isolating methods).
    learn(loaded, "C", random_batch(seed=2))
    if name in ISOLATING:
        assert torch.equal(logits(loaded, batch, "A"), after)


@pytest.mark.parametrize("name", sorted(ISOLATING))
def test_no_optimizer_can_reach_a_finished_task(name):
    """Issue 14.3: `requires_grad_(True)` on the whole model and an optimizer over `model.parameters()` in every
    phase of a later task still leave a finished task's logits bit-exact: shared tensors are buffers."""
    model = get_method(name).build(tiny_encoder("bert"), small_config(name))
    batch = random_batch()
    learn(model, "A", batch)
    before = logits(model, batch, "A")
    model.add_task("B", 3)
    for phase in model.phases():
        model.begin_phase(phase.name)
        model.requires_grad_(True)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        for _ in range(2):
            model.train()
            out = model(batch[0], batch[1], labels=batch[2], task="B")
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.finish_task()
    assert torch.equal(logits(model, batch, "A"), before), f"{name}: an optimizer over model.parameters() changed task A"


@pytest.mark.parametrize("name", METHODS)
def test_trainer_resume_and_cli(name, tiny_model_dir, small_tasks, tmp_path, capsys):
    """Through the trainer: a run killed after its first task resumes and ends equal to an uninterrupted one;
    then the CLI evaluates, predicts with and exports its checkpoint."""
    settings = dict(mask_epochs=1, weight_epochs=1, pooling="cls", **small_config(name))
    args = make_args(tiny_model_dir, tmp_path / "full", name, **settings)
    full = ContinualTrainer(build_model(args), args, small_tasks).train()
    args = make_args(tiny_model_dir, tmp_path / "crash", name, **settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ContinualTrainer(build_model(args), args, small_tasks, callbacks=[CrashAfterFirstTask()]).train()
    resumed = ContinualTrainer(build_model(args), args, small_tasks).train()
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    if name in JOINT:  # one step for every task: only the last row, and no continual metrics
        assert full["accuracy_matrix"][0] == [None, None] and full["bwt"] is None and full["average_accuracy"] > 0
    if name in ISOLATING:
        assert resumed["bwt"] == 0.0 and resumed["forgetting"] == 0.0
    batch = random_batch(length=8)
    a = load_pretrained(str(tmp_path / "full" / "checkpoint"))
    b = load_pretrained(str(tmp_path / "crash" / "checkpoint"))
    for task in a.tasks:
        assert torch.equal(logits(a, batch, task), logits(b, batch, task)), task

    config = {**{k: v for k, v in args.to_dict().items() if k not in ("method_config", "kkt")}, "tasks": small_tasks}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    ckpt = str(tmp_path / "full" / "checkpoint")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ckpt, "--config", str(path)]) == 0
    accuracies = json.loads(capsys.readouterr().out)
    assert accuracies == {"topic": full["accuracy_matrix"][-1][0], "sentiment": full["accuracy_matrix"][-1][1]}
    assert main(["predict", "--checkpoint", ckpt, "--task", "sentiment", "great love best", "awful hate"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[0]["label"] in ("0", "1")
    model = get_method(name).model_class
    if model.supports_export:
        assert main(["export", "--checkpoint", ckpt, "--task", "topic", "--output", str(tmp_path / "exported")]) == 0
        from transformers import AutoModelForSequenceClassification

        exported = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "exported")).eval()
        ids = batch[0][:, :8].clamp(max=exported.config.vocab_size - 1)
        with torch.no_grad():
            expected = a(ids, torch.ones_like(ids), task="topic").logits
            assert torch.allclose(exported(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, expected, atol=1e-5)
    else:
        assert main(["export", "--checkpoint", ckpt, "--task", "topic", "--output", str(tmp_path / "exported")]) == 2


def test_readme_add_a_method_example_runs_as_written(tmp_path):
    """The README's "Add a method" block, run as written in a fresh process, then trained, saved and loaded."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Add a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.splitlines()) < 60
    (tmp_path / "probe_method.py").write_text(code)
    check = f"""
import sys, torch
sys.path.insert(0, {str(tmp_path)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
import probe_method
from conftest import random_batch, tiny_encoder, train_steps
from exssnet_nlp import get_method, load_pretrained
model = get_method("probe").build(tiny_encoder("bert"))
batch = random_batch()
for task in ("A", "B"):
    model.add_task(task, 3)
    for phase in model.phases():
        model.begin_phase(phase.name)
        train_steps(model, batch, 2)
    model.finish_task()
model.save_pretrained({str(tmp_path / "ckpt")!r})
loaded = load_pretrained({str(tmp_path / "ckpt")!r}, encoder=tiny_encoder("bert")).eval()
model.eval()
with torch.no_grad():
    assert all(torch.equal(model(batch[0], batch[1], task=t).logits, loaded(batch[0], batch[1], task=t).logits) for t in "AB")
print("ok", loaded.method, loaded.tasks)
"""
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok probe ['A', 'B']" in proc.stdout
    # The CLI, which imports nothing of the user's, finds the method through $EXSSNET_NLP_PLUGINS.
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "EXSSNET_NLP_PLUGINS": "probe_method"}
    for argv, expected in ((["methods"], "A linear probe per task"), (["train", "--method", "probe", "--help"], "--head_lr")):
        proc = subprocess.run([sys.executable, "-m", "exssnet_nlp", *argv], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0 and expected in proc.stdout, proc.stderr[-3000:]


def test_plug_in_methods_load_from_entry_points_and_a_broken_one_is_skipped(monkeypatch, caplog):
    """An installed package names its method's module under the `exssnet_nlp.methods` entry-point group: the first
    lookup of an unknown name imports it. One that fails to import is logged, and the built-in methods still work."""
    from importlib import metadata

    from exssnet_nlp.methods import registry

    imported = []

    class Point:  # the two attributes and the method of importlib.metadata.EntryPoint that the registry uses
        def __init__(self, name, value, load):
            self.name, self.value, self.load = name, value, load

    def register():
        imported.append("plugged")
        registry.register_method("plugged", registry.get_method("supsup").config_class, "exssnet_nlp.methods.supermask.model:ExSSNetModel",
                                 defaults={"method": "supsup"}, description="a plug-in")

    def broken():
        raise ImportError("No module named 'missing_dependency'")

    points = [Point("plugged", "plug_pkg.method", register), Point("broken", "broken_pkg.method", broken)]
    monkeypatch.setattr(metadata, "entry_points", lambda group: points if group == registry.PLUGIN_GROUP else [])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.delenv(registry.PLUGIN_ENV, raising=False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plug-in leaves no trace in other tests
    with caplog.at_level("WARNING", logger="exssnet_nlp"):
        assert registry.get_method("plugged").description == "a plug-in"
        assert registry.get_method("exssnet").name == "exssnet" and imported == ["plugged"]  # imported once
    assert "'broken' (broken_pkg.method) failed to import and is skipped: ImportError" in caplog.text
    with pytest.raises(ValueError, match="not a registered method.*EXSSNET_NLP_PLUGINS"):
        registry.get_method("nonexistent")
