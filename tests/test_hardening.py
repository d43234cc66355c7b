"""Issue 14: each way to lose work or get a silently wrong result, closed with a regression test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import random_batch, tiny_encoder, train_steps

from exssnet_nlp import checkpoint as ckpt
from exssnet_nlp.methods import get_method, load_pretrained

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
