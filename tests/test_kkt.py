"""KNN knowledge transfer: sampling, scoring, source choice, mask transfer and zero forgetting.

Synthetic "text": 16-token sequences. Task A (3 classes) marks its class with tokens from
[20 + 10c, 30 + 10c) and fills the rest with tokens of B's signal range plus uniform noise; task B
(2 classes) does the reverse with [120, 140). A's trained mask (and the weights it owns) separate
A's classes far better than B's mask does, which is what KKT has to find for A' (A's data again).
The scenario seed is `KKT_TEST_SEED` (default 0): `for s in 0 1 2 3 4; do KKT_TEST_SEED=$s pytest
tests/test_kkt.py; done` checks that the outcome does not hinge on one lucky seed.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time

import pytest
import torch
from transformers import BertConfig, BertModel

from exssnet_nlp.kkt import KKTConfig, KKTResult, apply_transfer, knn_scores, run_kkt, select_sample
from exssnet_nlp.methods import get_method
from exssnet_nlp.methods.supermask import ExSSNetConfig, ExSSNetModel

SEED = int(os.environ.get("KKT_TEST_SEED", "0"))
VOCAB = 200
LENGTH = 16
NUM_EXAMPLES = 384
A_LABELS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def make_data(seed: int, signal_lo: int, num_classes: int, noise_lo: int, p_signal: float = 0.25, p_cross: float = 0.5):
    """Token ids whose class shows in a quarter of the tokens; half of the rest come from `noise_lo`'s range."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(NUM_EXAMPLES) % num_classes)[torch.randperm(NUM_EXAMPLES, generator=g)]
    ids = torch.randint(5, VOCAB, (NUM_EXAMPLES, LENGTH), generator=g)
    cross = noise_lo + torch.randint(0, 20, (NUM_EXAMPLES, LENGTH), generator=g)
    ids = torch.where(torch.rand(NUM_EXAMPLES, LENGTH, generator=g) < p_cross, cross, ids)
    signal = signal_lo + 10 * labels[:, None] + torch.randint(0, 10, (NUM_EXAMPLES, LENGTH), generator=g)
    ids = torch.where(torch.rand(NUM_EXAMPLES, LENGTH, generator=g) < p_signal, signal, ids)
    ids[:, 0] = 2  # a fixed [CLS]-like first token
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels


def train_phases(model: ExSSNetModel, encodings, labels, steps: int = 60, mask_lr: float = 0.01, weight_lr: float = 0.05) -> None:
    """Mask phase then weight phase over the learning task, mini-batches of 64, Adam; leaves the task unfinished."""
    g = torch.Generator().manual_seed(SEED)
    for phase, lr in (("mask", mask_lr), ("weight", weight_lr)):
        model.begin_phase(phase)
        opt = torch.optim.Adam(model.trainable_parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            rows = torch.randperm(len(labels), generator=g)[:64]
            out = model(encodings["input_ids"][rows], encodings["attention_mask"][rows], labels=labels[rows])
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()


def logits_of(model: ExSSNetModel, task: str, encodings) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(encodings["input_ids"][:32], encodings["attention_mask"][:32], task=task).logits.clone()


@pytest.fixture(scope="module")
def scenario():
    """A model that learned A then B (both finished), with their data; tests work on deep copies."""
    torch.manual_seed(SEED)
    encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=32))
    model = ExSSNetModel.from_encoder(encoder, ExSSNetConfig(density=0.2, pooling="mean", head_dropout=0.0, seed=SEED))
    data_a = make_data(100 + SEED, signal_lo=20, num_classes=A_LABELS, noise_lo=120)
    data_b = make_data(200 + SEED, signal_lo=120, num_classes=2, noise_lo=20)
    for name, (encodings, labels), num_labels in (("A", data_a, A_LABELS), ("B", data_b, 2)):
        model.add_task(name, num_labels)
        train_phases(model, encodings, labels)
        model.finish_task()
    return model, data_a, data_b


@pytest.fixture
def learned(scenario):
    model, data_a, data_b = scenario
    return copy.deepcopy(model), data_a, data_b


def masks_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


# --- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("mode", "first"), ("pooling", "max"), ("k", 0), ("k", 2.5), ("k", True),
                                         ("sample_fraction", 0.0), ("sample_fraction", 1.5), ("max_samples", 0),
                                         ("min_samples", 0), ("batch_size", 0), ("test_size", 0.0), ("test_size", 1.0),
                                         ("min_improvement", -0.1), ("min_improvement", 1.0), ("seed", "x")])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"KKTConfig.{field}"):
        KKTConfig(**{field: value})


def test_config_min_above_max_and_dict_round_trip():
    with pytest.raises(ValueError, match="min_samples"):
        KKTConfig(min_samples=500, max_samples=100)
    config = KKTConfig(mode="all", k=5, sample_fraction=0.2, max_samples=300, min_improvement=0.05, seed=3)
    assert KKTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert KKTConfig.from_dict({"mode": "off", "k": None, "sample_fraction": 0.5, "max_samples": 200}).mode == "off"
    with pytest.raises(ValueError, match="Unknown KKTConfig field"):
        KKTConfig.from_dict({"mdoe": "best"})


def test_default_k_and_sample_size():
    config = KKTConfig()
    assert [config.resolved_k(n) for n in (1, 2, 10, 70, 100, 700, 10_000)] == [1, 1, 3, 7, 9, 25, 25]
    assert all(config.resolved_k(n) % 2 == 1 for n in range(1, 2000))
    assert KKTConfig(k=50).resolved_k(20) == 20  # never more neighbours than fitted points
    assert [config.sample_size(n) for n in (0, 30, 500, 5_000, 50_000)] == [0, 30, 100, 500, 1000]


# --- sampling -----------------------------------------------------------------------------------
def test_select_sample_is_seeded_and_stratified():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    config = KKTConfig(sample_fraction=0.2, seed=1)
    idx = select_sample(len(labels), labels, config)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200 and torch.equal(idx, idx.sort().values)
    assert torch.bincount(labels[idx]).tolist() == [180, 18, 2]
    assert torch.equal(idx, select_sample(len(labels), labels, config))
    assert not torch.equal(idx, select_sample(len(labels), labels, KKTConfig(sample_fraction=0.2, seed=2)))
    assert len(select_sample(1000, None, config)) == 200
    assert torch.equal(select_sample(40, labels[:40], config), torch.arange(40))  # fewer than min_samples: all of them


# --- choosing the source ------------------------------------------------------------------------
def test_best_picks_the_task_whose_data_it_is(learned):
    model, (enc_a, labels_a), _ = learned
    before = {t: model.task_mask(t) for t in ("A", "B")}
    assert model.supports_kkt
    model.add_task("A2", A_LABELS)
    permuted = (labels_a + 1) % A_LABELS  # the same partition under other label names
    result = model.knowledge_transfer(enc_a, permuted, KKTConfig(sample_fraction=1.0, seed=SEED))
    assert set(result.knn_accuracy) == {"A", "B"}
    assert result.knn_accuracy["A"] > result.knn_accuracy["B"] + 0.1, result
    assert result.sources == ["A"] and result.num_samples == NUM_EXAMPLES
    assert result.chance == pytest.approx(1 / 3) and result.threshold > result.chance
    assert masks_equal(model.task_mask("A2"), before["A"])
    assert all(masks_equal(model.task_mask(t), before[t]) for t in before)
    json.dumps(result.to_dict())

    # Lists (e.g. a padded `datasets` column) and tensors sample and score the same rows.
    sampled = KKTConfig(sample_fraction=0.5, min_samples=50, seed=SEED)
    as_lists = {k: v.tolist() for k, v in enc_a.items()}
    assert run_kkt(model, as_lists, permuted.tolist(), A_LABELS, sampled).knn_accuracy == \
        run_kkt(model, enc_a, permuted, A_LABELS, sampled).knn_accuracy  # lists and tensors sample the same rows


@pytest.mark.parametrize("imbalanced", [False, True])
def test_random_labels_pick_no_source(learned, imbalanced):
    model, (enc_a, _), _ = learned
    model.add_task("R", 2)
    initial = model.task_mask("R")
    g = torch.Generator().manual_seed(SEED + 7)
    labels = (torch.rand(NUM_EXAMPLES, generator=g) < (0.2 if imbalanced else 0.5)).long()
    result = run_kkt(model, enc_a, labels, 2, KKTConfig(sample_fraction=1.0, seed=SEED))
    assert result.sources == [] and result.weights == []
    assert all(acc <= result.threshold for acc in result.knn_accuracy.values()), result
    if imbalanced:  # a KNN answering the majority class scores ~0.8: the baseline, not 1/2, is what to beat
        assert result.baseline > 0.7 and result.chance == 0.5
    assert masks_equal(model.task_mask("R"), initial)  # nothing transferred


def test_fixed_margin_zero_means_strictly_above_chance(learned):
    model, (enc_a, labels_a), _ = learned
    model.add_task("A2", A_LABELS)
    result = run_kkt(model, enc_a, labels_a, A_LABELS, KKTConfig(mode="all", sample_fraction=1.0, min_improvement=0.0, seed=SEED))
    assert result.threshold == pytest.approx(max(result.chance, result.baseline))
    assert result.sources == [t for t in ("A", "B") if result.knn_accuracy[t] > result.threshold]


# --- transfer and zero forgetting ---------------------------------------------------------------
@pytest.mark.parametrize("mode", ["best", "all"])
def test_transfer_then_training_leaves_earlier_tasks_unchanged(learned, mode):
    model, (enc_a, labels_a), (enc_b, _) = learned
    logits_before = {"A": logits_of(model, "A", enc_a), "B": logits_of(model, "B", enc_b)}
    masks_before = {t: model.task_mask(t) for t in ("A", "B")}
    layers = model.supermask_layers()
    assert all(layer.packed_mask(0).dtype == torch.uint8 for layer in layers.values())  # held as packed bits

    model.add_task("A2", A_LABELS)
    result = run_kkt(model, enc_a, (labels_a + 2) % A_LABELS, A_LABELS, KKTConfig(mode=mode, sample_fraction=1.0, seed=SEED))
    initial = model.task_mask("A2")
    if mode == "best":
        assert result.sources == ["A"] and masks_equal(initial, masks_before["A"])
    else:
        assert "A" in result.sources and len(result.weights) == len(result.sources)
        assert all(w > 0 for w in result.weights)
        for name, layer in layers.items():
            union = torch.zeros_like(initial[name])
            for source in result.sources:
                union |= masks_before[source][name]
            assert int(initial[name].sum()) == layer.k and not (initial[name] & ~union).any()

    train_phases(model, enc_a, (labels_a + 2) % A_LABELS, steps=5)
    model.finish_task()
    for task, encodings in (("A", enc_a), ("B", enc_b)):
        assert torch.equal(logits_of(model, task, encodings), logits_before[task])
        assert masks_equal(model.task_mask(task), masks_before[task])


def test_all_vote_rule(learned):
    model, _, _ = learned
    masks = {t: model.task_mask(t) for t in ("A", "B")}
    model.add_task("C", 2)
    # Two sources, unequal weights: the heavier mask outvotes the lighter wherever they differ.
    apply_transfer(model, ["B", "A"], [0.1, 0.3], torch.Generator().manual_seed(0))
    assert masks_equal(model.task_mask("C"), masks["A"])
    # Equal weights: the intersection first, then a seeded random share of the symmetric difference.
    apply_transfer(model, ["A", "B"], None, torch.Generator().manual_seed(0))
    first = model.task_mask("C")
    for name, layer in model.supermask_layers().items():
        both, either = masks["A"][name] & masks["B"][name], masks["A"][name] | masks["B"][name]
        assert int(first[name].sum()) == layer.k
        assert not (both & ~first[name]).any() and not (first[name] & ~either).any()
    apply_transfer(model, ["A", "B"], None, torch.Generator().manual_seed(0))
    assert masks_equal(model.task_mask("C"), first)
    apply_transfer(model, ["A", "B"], None, torch.Generator().manual_seed(1))
    assert not masks_equal(model.task_mask("C"), first)


def test_apply_transfer_errors(learned):
    model, (enc_a, labels_a), _ = learned
    with pytest.raises(ValueError, match="add_task"):
        apply_transfer(model, ["A"])
    model.add_task("C", 2)
    with pytest.raises(ValueError, match="finished tasks"):
        apply_transfer(model, ["A", "Z"])
    with pytest.raises(ValueError, match="finished tasks"):
        apply_transfer(model, ["A", "A"])
    with pytest.raises(ValueError, match="at least one"):
        apply_transfer(model, [])
    with pytest.raises(ValueError, match="positive"):
        apply_transfer(model, ["A", "B"], [1.0, 0.0])
    with pytest.raises(ValueError, match="labels must be in"):
        run_kkt(model, enc_a, labels_a, 2)
    with pytest.raises(ValueError, match="added with 2 labels"):
        run_kkt(model, enc_a, labels_a, A_LABELS)
    model.begin_phase("mask")
    apply_transfer(model, ["A"])  # during the mask phase: still allowed
    model.begin_phase("weight")
    with pytest.raises(ValueError, match="before the weight phase"):
        apply_transfer(model, ["A"])


# --- cheap paths and bookkeeping ----------------------------------------------------------------
def test_off_mode_does_nothing(learned, monkeypatch):
    model, (enc_a, labels_a), _ = learned
    model.add_task("C", A_LABELS)
    initial = model.task_mask("C")

    def no_forward(*args, **kwargs):
        raise AssertionError("mode off must not run the encoder")

    monkeypatch.setattr(model, "encode", no_forward)
    start = time.perf_counter()
    result = run_kkt(model, enc_a, labels_a, A_LABELS, KKTConfig(mode="off"))
    assert time.perf_counter() - start < 0.05
    assert result == KKTResult(task="C", mode="off")
    assert masks_equal(model.task_mask("C"), initial)


def test_unpadded_lists_are_padded_per_sample(learned):
    model, (enc_a, labels_a), _ = learned
    model.add_task("A2", A_LABELS)
    lengths = 8 + torch.arange(NUM_EXAMPLES) % (LENGTH - 7)  # 8..16 real tokens
    ragged = {"input_ids": [row[:n].tolist() for row, n in zip(enc_a["input_ids"], lengths, strict=True)]}
    padded = {"input_ids": enc_a["input_ids"].clone(), "attention_mask": (torch.arange(LENGTH) < lengths[:, None]).long()}
    config = KKTConfig(sample_fraction=0.5, seed=SEED)
    from_lists = run_kkt(model, ragged, labels_a.tolist(), A_LABELS, config)
    from_tensors = run_kkt(model, padded, labels_a, A_LABELS, config)
    assert from_lists.sources == from_tensors.sources == ["A"]
    for task, acc in from_tensors.knn_accuracy.items():
        assert from_lists.knn_accuracy[task] == pytest.approx(acc, abs=0.02)


def test_first_task_gets_an_empty_result(caplog):
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    model = ExSSNetModel.from_encoder(encoder, ExSSNetConfig(density=0.2))
    encodings, labels = make_data(0, 20, 2, 120)
    model.add_task("first", 2)
    initial = model.task_mask("first")
    with caplog.at_level(logging.INFO, logger="exssnet_nlp.kkt"):
        result = run_kkt(model, encodings, labels, 2)
    assert result.task == "first" and result.knn_accuracy == {} and result.sources == [] and result.num_samples == 0
    assert masks_equal(model.task_mask("first"), initial)
    assert "KKT task=first" in caplog.text and "no finished task" in caplog.text


def test_too_few_examples_skips_with_a_warning(learned, caplog):
    model, (enc_a, labels_a), _ = learned
    model.add_task("C", A_LABELS)
    few = {k: v[:3] for k, v in enc_a.items()}
    with caplog.at_level(logging.INFO, logger="exssnet_nlp.kkt"):
        result = run_kkt(model, few, labels_a[:3], A_LABELS)
    assert result.sources == [] and result.knn_accuracy == {} and result.num_samples == 3
    assert "skipped" in caplog.text


def test_knn_scores_restore_mode_and_task(learned, caplog):
    model, (enc_a, labels_a), _ = learned
    model.add_task("C", A_LABELS)
    model.set_task("A")
    ids, mask = enc_a["input_ids"][:8], enc_a["attention_mask"][:8]
    model.eval()
    with torch.no_grad():
        before = model(ids, mask).logits  # the current task, A
    model.train()
    scores = knn_scores(model, {k: v[:120] for k, v in enc_a.items()}, labels_a[:120], KKTConfig(seed=SEED))
    assert set(scores) == {"A", "B"} and all(0.0 <= s <= 1.0 for s in scores.values())
    assert model.training and model.current_task == "A"
    model.eval()
    with torch.no_grad():  # B was embedded last; the default forward still computes A's function
        assert torch.equal(model(ids, mask).logits, before)
    assert knn_scores(model, enc_a, labels_a, KKTConfig(seed=SEED), tasks=["B"]).keys() == {"B"}
    as_lists = {k: v[:120].tolist() for k, v in enc_a.items()}  # e.g. a padded `datasets` column
    assert knn_scores(model, as_lists, labels_a[:120].tolist(), KKTConfig(seed=SEED)) == scores
    with pytest.raises(ValueError, match="not finished"):
        knn_scores(model, enc_a, labels_a, tasks=["C"])


def test_apply_transfer_is_the_models_start_from_tasks(learned):
    model, _, _ = learned
    twin = copy.deepcopy(model)
    for m in (model, twin):
        m.add_task("C", 2)
    apply_transfer(model, ["A", "B"], [1.0, 1.0], torch.Generator().manual_seed(5))
    twin.start_from_tasks(["A", "B"], [1.0, 1.0], torch.Generator().manual_seed(5))
    assert masks_equal(model.task_mask("C"), twin.task_mask("C"))
    for name, layer in model.supermask_layers().items():
        assert torch.equal(layer.scores, twin.supermask_layers()[name].scores), name
    # A method that can't transfer says so: the dense baselines have no masks to start from.
    assert not get_method("finetune").model_class.supports_kkt


def test_transfer_copies_the_heaviest_sources_norms():
    from conftest import learn_task, random_batch, tiny_encoder

    model = ExSSNetModel.from_encoder(tiny_encoder("bert"), ExSSNetConfig(density=0.3, task_norms=True))
    learn_task(model, "A", random_batch(seed=0), 3)
    learn_task(model, "B", random_batch(seed=1), 3)
    model.add_task("C", 3)
    apply_transfer(model, ["A", "B"], [0.1, 0.3], torch.Generator().manual_seed(0))
    for norm in model.task_norm_layers().values():
        assert torch.equal(norm.learning_weight, norm.task_affine(1)[0])
        assert torch.equal(norm.learning_bias, norm.task_affine(1)[1])
