"""Issue 14: each way to lose work or get a silently wrong result, closed with a regression test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import WORDS, CrashAfterFirstTask, make_args, random_batch, tiny_encoder, train_steps, write_task

from exssnet_nlp import checkpoint as ckpt
from exssnet_nlp.methods import get_method, load_pretrained
from exssnet_nlp.training import ContinualTrainer, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def two_task_model(method: str = "exssnet"):
    model = get_method(method).build(tiny_encoder("bert"), {"density": 0.3} if method != "lora" else {})
    for i, name in enumerate(("A", "B")):
        model.add_task(name, 3, ["neg", "neu", "pos"])
        for phase in model.phases():
            model.begin_phase(phase.name)
            train_steps(model, random_batch(seed=i), 2)
        model.finish_task()
    return model


def raw_edit(directory: Path, edit) -> None:
    """Edit the config as a careless user would: without re-hashing it."""
    path = directory / ckpt.CONFIG_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def sealed_edit(directory: Path, edit) -> None:
    """Edit the config and re-hash it: what only a deliberate forger does (the deeper checks must still hold)."""
    path = directory / ckpt.CONFIG_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(ckpt.seal_config(data)))


# --- 7: the config's own integrity ---------------------------------------------------------------
@pytest.mark.parametrize("edit", [
    lambda d: d["method_config"].update(pooling="cls" if d["method_config"].get("pooling") != "cls" else "mean"),
    lambda d: d["method_config"].update(head_activation="relu"),
    lambda d: d["tasks"][0].update(name="renamed"),
    lambda d: d["tasks"][0].update(label_names=["x", "y", "z"]),
    lambda d: d.update(method="ssnet"),
    lambda d: d.update(files={}),
], ids=["pooling", "head_activation", "task_name", "label_names", "method", "files_emptied"])
def test_edited_config_is_refused(tmp_path, edit):
    out = two_task_model().save_pretrained(tmp_path / "ckpt")
    assert load_pretrained(out).tasks == ["A", "B"]
    raw_edit(out, edit)
    with pytest.raises(ValueError, match="config_sha256"):
        load_pretrained(out, encoder=tiny_encoder("bert"))


def test_incomplete_file_list_is_refused_even_when_rehashed(tmp_path):
    out = two_task_model().save_pretrained(tmp_path / "ckpt")
    sealed_edit(out, lambda d: d.update(files={}))
    with pytest.raises(ValueError, match="no size and sha256 for task_000.safetensors"):
        load_pretrained(out, encoder=tiny_encoder("bert"))
    out = two_task_model().save_pretrained(tmp_path / "ckpt2")
    sealed_edit(out, lambda d: d["files"]["task_001.safetensors"].pop("sha256"))
    with pytest.raises(ValueError, match="no size and sha256 for task_001.safetensors"):
        load_pretrained(out, encoder=tiny_encoder("bert"))


def test_config_without_digest_is_refused(tmp_path):
    out = two_task_model().save_pretrained(tmp_path / "ckpt")
    raw_edit(out, lambda d: d.pop(ckpt.CONFIG_DIGEST_KEY))
    with pytest.raises(ValueError, match="lacks the 'config_sha256' entry"):
        load_pretrained(out, encoder=tiny_encoder("bert"))


# --- 10: an untrusted checkpoint -------------------------------------------------------------------
def test_huge_num_labels_is_refused_without_building_it(tmp_path):
    out = two_task_model().save_pretrained(tmp_path / "ckpt")
    sealed_edit(out, lambda d: d["tasks"][0].update(num_labels=10**12, label_names=[]))
    with pytest.raises(ValueError, match="num_labels=1000000000000 but its head has 3 output rows"):
        load_pretrained(out, encoder=tiny_encoder("bert"))


def test_huge_layer_count_is_refused_before_building(tmp_path):
    out = two_task_model().save_pretrained(tmp_path / "ckpt", include_base=True)
    sealed_edit(out, lambda d: d["encoder"]["config"].update(num_hidden_layers=10**6))
    with pytest.raises(ValueError, match="num_hidden_layers=1000000 but base_model.safetensors holds 2 layers"):
        load_pretrained(out)
    out = two_task_model().save_pretrained(tmp_path / "ckpt2", include_base=True)
    sealed_edit(out, lambda d: d["encoder"]["config"].update(hidden_size=4096, intermediate_size=10**6))
    with pytest.raises(ValueError, match="other shapes"):
        load_pretrained(out)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.safetensors", "task_000.safetensors/../../x"])
def test_paths_outside_the_checkpoint_are_refused(tmp_path, name):
    out = two_task_model().save_pretrained(tmp_path / "ckpt")

    def point_outside(d):
        d["files"][name] = d["files"]["task_000.safetensors"]
        d["tasks"][0]["file"] = name

    sealed_edit(out, point_outside)
    with pytest.raises(ValueError, match="not a tensor file of a checkpoint"):
        load_pretrained(out, encoder=tiny_encoder("bert"))


# --- 2: settings that silently break training --------------------------------------------------------
@pytest.mark.parametrize("setting, value, message", [
    ("max_grad_norm", -1.0, "max_grad_norm=-1.0 must be a finite number > 0"),
    ("max_grad_norm", float("nan"), "max_grad_norm=nan"),
    ("warmup_ratio", 1.5, "warmup_ratio=1.5 must be a fraction in \\[0, 1\\]"),
    ("warmup_ratio", -0.1, "warmup_ratio=-0.1"),
    ("weight_learning_rate", float("inf"), "weight_learning_rate=inf must be a finite positive number"),
    ("mask_learning_rate", float("nan"), "mask_learning_rate=nan"),
    ("seed", 7.5, "seed=7.5 must be an int"),
    ("seed", True, "seed=True must be an int"),
    ("per_device_train_batch_size", 2.5, "per_device_train_batch_size=2.5 must be an integer >= 1"),
    ("mask_epochs", float("inf"), "mask_epochs=inf must be a finite number >= 0"),
    ("train_samples_per_class", -3, "train_samples_per_class=-3 must be an integer >= 0"),
])
def test_bad_training_settings_are_refused(setting, value, message):
    from exssnet_nlp.training import ContinualTrainingArguments

    with pytest.raises(ValueError, match=message):
        ContinualTrainingArguments(model_name_or_path="x", **{setting: value})
    ContinualTrainingArguments(model_name_or_path="x", max_grad_norm=None, warmup_ratio=1.0)  # the edges are fine


# --- 1: resume with other settings -----------------------------------------------------------------------
def crashed_run(model_dir, out, tasks, **settings):
    args = make_args(model_dir, out, "exssnet", mask_epochs=1, weight_epochs=1, density=0.1, **settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ContinualTrainer(build_model(args), args, tasks, callbacks=[CrashAfterFirstTask()]).train()
    return args


def test_resume_with_other_settings_is_refused(tiny_model_dir, small_tasks, tmp_path):
    crashed_run(tiny_model_dir, tmp_path / "run", small_tasks)
    # (0.3: a run saved with density 0.1, the former default, keeps it when the command gives today's, 0.5)
    args = make_args(tiny_model_dir, tmp_path / "run", "supsup", mask_epochs=1, weight_epochs=1, density=0.3, seed=7)
    with pytest.raises(ValueError) as err:
        ContinualTrainer(build_model(args), args, small_tasks).train()
    message = str(err.value)
    for expected in ("method: 'exssnet' -> 'supsup'", "method_config.density: 0.1 -> 0.3", "seed: 0 -> 7",
                     "--overwrite_output_dir true", "re-run with the saved settings"):
        assert expected in message, (expected, message)
    assert not (tmp_path / "run" / "results.json").exists()
    # Settings that shape neither model nor data may change; the run then resumes and finishes.
    args = make_args(tiny_model_dir, tmp_path / "run", "exssnet", mask_epochs=1, weight_epochs=1, density=0.1,
                     logging_steps=1, evaluations_per_phase=1)
    assert ContinualTrainer(build_model(args), args, small_tasks).train()["tasks"] == ["topic", "sentiment"]


def test_resume_with_other_data_is_refused(tiny_model_dir, small_tasks, tmp_path):
    crashed_run(tiny_model_dir, tmp_path / "run", small_tasks)
    args = make_args(tiny_model_dir, tmp_path / "run", "exssnet", mask_epochs=1, weight_epochs=1, density=0.1)
    changed = write_task(tmp_path / "other", "topic", WORDS["topic"], n_train=10, n_test=6, seed=5)
    with pytest.raises(ValueError, match="data of task 'topic'"):
        ContinualTrainer(build_model(args), args, [changed, small_tasks[1]]).train()


# --- 4: a save killed at any step ---------------------------------------------------------------------------
KILL_SCRIPT = r"""
import os, shutil, signal, sys
import torch
from transformers import BertConfig, BertModel
from exssnet_nlp import io as eio
from exssnet_nlp.methods import get_method

out, step = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
model = get_method("exssnet").build(encoder, {"density": 0.3})
def learn(name):
    model.add_task(name, 2)
    for phase in model.phases():
        model.begin_phase(phase.name)
    model.finish_task()
learn("A")
model.save_pretrained(out, include_base=True)
learn("B")
kill = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
calls = {"write": 0, "rename": 0}
real_write, real_rename = eio.write_bytes_atomic, os.rename
def write(*a, **k):
    calls["write"] += 1
    if step == "writing" and calls["write"] == 2:
        kill()
    return real_write(*a, **k)
def rename(*a, **k):
    calls["rename"] += 1
    if (step == "before_first_rename" and calls["rename"] == 1) or (step == "between_renames" and calls["rename"] == 2):
        kill()
    return real_rename(*a, **k)
import exssnet_nlp.checkpoint as ck
ck.write_bytes_atomic = write
eio.os.rename = rename
if step == "removing_old":
    eio.shutil.rmtree = kill
model.save_pretrained(out, include_base=True)
print("not killed")
"""


@pytest.mark.parametrize("step, tasks", [("writing", ["A"]), ("before_first_rename", ["A"]),
                                         ("between_renames", ["A", "B"]), ("removing_old", ["A", "B"])])
def test_save_killed_at_each_step_leaves_a_whole_checkpoint(tmp_path, step, tasks):
    import signal
    import subprocess
    import sys

    out = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out), step], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ckpt"]
    assert leftovers, "the kill should have left the swap's temporary directories behind"
    assert load_pretrained(out).tasks == tasks  # loading recovers a missing `ckpt` first
    ckpt.recover_checkpoint(out)  # what every save and every trainer start runs: leftovers go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_pretrained(out).tasks == tasks


def test_trainer_resumes_after_a_save_killed_between_renames(tiny_model_dir, small_tasks, tmp_path):
    """What a kill between the two renames leaves (no `checkpoint/`, the data in `.checkpoint.old-*`): the next
    start puts it back and resumes; it used to fail with a Hub 'repo id' error."""
    args = crashed_run(tiny_model_dir, tmp_path / "run", small_tasks)
    (tmp_path / "run" / "checkpoint").rename(tmp_path / "run" / ".checkpoint.old-0123456789ab")
    results = ContinualTrainer(build_model(args), args, small_tasks).train()
    assert results["tasks"] == ["topic", "sentiment"] and results["accuracy_matrix"][1][1] is not None
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []


# --- 5: timing the top-k candidates must not consume the global random state -------------------------
def test_choosing_the_topk_method_leaves_the_global_rng_alone():
    from exssnet_nlp.masks import choose_topk_method

    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(3, 517 * 3, generator=g), torch.rand(5, 389 * 7, generator=g)]  # shapes no other test times
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    choose_topk_method(rows[0], 40)
    choose_topk_method(rows[1], 11)
    assert torch.equal(torch.rand(4), expected)


# --- 8: `evaluate` reproduces the run ----------------------------------------------------------------------
def test_evaluate_uses_the_runs_settings_and_refuses_other_labels(tiny_model_dir, small_tasks, tmp_path, capsys):
    import yaml

    from exssnet_nlp.cli import main

    args = make_args(tiny_model_dir, tmp_path / "run", "exssnet", mask_epochs=1, weight_epochs=1, density=0.3,
                     max_length=12, seed=3, eval_samples_per_class=3)
    results = ContinualTrainer(build_model(args), args, small_tasks).train()
    # A config with only the data: max_length, seed and the test cap come from the checkpoint.
    config = tmp_path / "data_only.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": tiny_model_dir, "tasks": small_tasks}))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out) == dict(zip(results["tasks"], results["accuracy_matrix"][-1], strict=True))
    # A 3-way head scored on 2-class data is refused, not printed as an accuracy.
    swapped = [{**small_tasks[1], "name": "topic"}, {**small_tasks[0], "name": "sentiment"}]
    config.write_text(yaml.safe_dump({"model_name_or_path": tiny_model_dir, "tasks": swapped}))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--config", str(config)]) == 2
    assert "the checkpoint's head has 3" in capsys.readouterr().err


# --- 9: classes the data does not have -----------------------------------------------------------------
def _jsonl(path: Path, labels: list[int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": lab}) + "\n" for i, lab in enumerate(labels)))
    return str(path)


def test_a_class_without_training_rows_is_refused(tmp_path, caplog):
    from exssnet_nlp.data import load_task, resolve_task_spec

    train = _jsonl(tmp_path / "train.jsonl", [0, 1, 2] * 4)
    typo = _jsonl(tmp_path / "test_typo.jsonl", [0, 1, 2, 7])  # a typo label only in test: 8 classes inferred
    with pytest.raises(ValueError, match=r"class 3 \('3'\).* has no rows in the train split"):
        load_task(resolve_task_spec({"name": "t", "train_file": train, "test_file": typo}), validation_samples_per_class=0)
    test = _jsonl(tmp_path / "test.jsonl", [0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"class 3 \('d'\), class 4 \('e'\) has no rows in the train split"):
        load_task(resolve_task_spec({"name": "t", "train_file": train, "test_file": test,
                                     "label_names": ["a", "b", "c", "d", "e"]}), validation_samples_per_class=0)
    # A class only missing from test is legitimate (small test sets): a loud warning, not an error.
    partial = _jsonl(tmp_path / "test_partial.jsonl", [0, 1, 0, 1])
    with caplog.at_level("WARNING"):
        data = load_task(resolve_task_spec({"name": "t", "train_file": train, "test_file": partial}),
                         validation_samples_per_class=0)
    assert data.num_labels == 3 and "class 2 ('2') has no rows in the test split" in caplog.text


# --- 11: messages instead of tracebacks ------------------------------------------------------------------
def _task_files(tmp_path: Path, train_bytes: bytes, name: str = "train.jsonl") -> dict:
    (tmp_path / name).write_bytes(train_bytes)
    return {"name": "t", "train_file": str(tmp_path / name), "test_file": str(tmp_path / name)}


def test_non_utf8_files_name_the_file_and_line(tmp_path):
    from exssnet_nlp.data import load_task, resolve_task_spec

    rows = b'{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 1}\n{"text": "x", "label": 1}\n{"text": "y", "label": 0}\n'
    with pytest.raises(ValueError, match=r"train.jsonl' is not UTF-8: line 2, byte 14 is b'\\xe9'.*iconv -f latin1"):
        load_task(resolve_task_spec(_task_files(tmp_path, rows)), validation_samples_per_class=0)
    csv = b"text,label\nna\xefve,0\nok,1\nx,1\ny,0\n"
    with pytest.raises(ValueError, match=r"data.csv' is not UTF-8: line 2, byte 3"):
        load_task(resolve_task_spec(_task_files(tmp_path, csv, "data.csv")), validation_samples_per_class=0)


def test_mixed_int_and_string_labels_are_named(tmp_path):
    from exssnet_nlp.data import load_task, resolve_task_spec

    rows = b'{"text": "a", "label": 0}\n{"text": "b", "label": "pos"}\n{"text": "c", "label": 1}\n'
    with pytest.raises(ValueError, match=r"label column 'label' mixes int and str values \(e.g. \[0, 'pos'\]\)"):
        load_task(resolve_task_spec(_task_files(tmp_path, rows)), validation_samples_per_class=0)


def test_broken_yaml_and_a_string_task_list(tmp_path):
    from exssnet_nlp.training import load_training_config

    broken = tmp_path / "broken.yaml"
    broken.write_text("model_name_or_path: x\ntasks: [ag_news\nmethod: exssnet\n")
    with pytest.raises(ValueError, match=r"broken.yaml' is not valid YAML at line \d+, column \d+"):
        load_training_config(str(broken))
    single = tmp_path / "single.yaml"
    single.write_text("model_name_or_path: x\ntasks: ag_news\n")
    with pytest.raises(ValueError, match=r"`tasks` must be a list.*tasks: \[ag_news\]"):
        load_training_config(str(single))


def test_trainer_refuses_bad_setups_before_training(tiny_model_dir, small_tasks, tmp_path):
    args = make_args(tiny_model_dir, tmp_path / "a", "exssnet", max_length=100000)
    with pytest.raises(ValueError, match="max_length=100000 exceeds the 64 positions"):
        ContinualTrainer(build_model(args), args, small_tasks)
    args = make_args(tiny_model_dir, tmp_path / "b", "lora", kkt_mode="best")
    with pytest.raises(ValueError, match="method 'lora' does not support KKT"):
        ContinualTrainer(build_model(args), args, small_tasks)
    args = make_args(tiny_model_dir, tmp_path / "c", "exssnet")
    with pytest.raises(ValueError, match="tasks must be a list"):
        ContinualTrainer(build_model(args), args, "topic")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_missing_model_path_is_named(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        get_method("exssnet").build(str(tmp_path / "no" / "model"))


def test_push_while_offline_is_a_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = two_task_model()
    with pytest.raises(ValueError, match="could not upload to the Hub repo 'me/model'.*HF_HUB_OFFLINE is set"):
        model.push_to_hub("me/model")


def test_half_precision_after_inference_uses_fresh_weights():
    model = two_task_model()
    batch = random_batch()
    model.eval()
    with torch.no_grad():
        full = model(batch[0], batch[1], task="A").logits  # fills the masked-weight cache in float32
        model.half()
        half = model(batch[0], batch[1], task="A").logits
    assert half.dtype == torch.float16 and torch.allclose(half.float(), full, atol=1e-2)
