"""`wsn`: one joint phase (mask + free weights), zero forgetting, exact checkpoints, export, storage."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch, tiny_encoder, train_steps

from exssnet_nlp.kkt import apply_transfer
from exssnet_nlp.masks import deflate_packed, unpack_bits
from exssnet_nlp.methods import get_method, load_pretrained
from exssnet_nlp.methods.supermask import ExSSNetConfig
from exssnet_nlp.methods.wsn import JointMaskedWeight, WSNConfig, WSNLinear, WSNModel

pytestmark = pytest.mark.usefixtures("one_thread")

LR, WEIGHT_DECAY = 1e-2, 0.1


def make(arch: str, density: float = 0.3, **kw) -> WSNModel:
    return get_method("wsn").build(tiny_encoder(arch), {"density": density, **kw})


def learn(model: WSNModel, name: str, batch, num_labels: int, steps: int = 3) -> None:
    model.add_task(name, num_labels)
    for phase in model.phases():
        model.begin_phase(phase.name)
        train_steps(model, batch, steps, lr=LR, weight_decay=WEIGHT_DECAY)  # every model parameter to AdamW
    model.finish_task()


def logits_of(model: WSNModel, task: str, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch[0], batch[1], task=task).logits.clone()


def weights_of(model: WSNModel) -> dict[str, torch.Tensor]:
    return {n: layer.weight.detach().clone() for n, layer in model.supermask_layers().items()}


BATCHES = {"a": (random_batch(seed=0), 3), "b": (random_batch(num_labels=2, seed=1), 2)}


# --- the method and its config ---------------------------------------------------------------------
def test_registered_with_one_joint_phase():
    model = make("bert")
    assert isinstance(model, WSNModel) and model.method == "wsn" and model.isolates_tasks
    assert model.supports_kkt and model.supports_export
    assert [p.name for p in model.phases()] == ["train"]
    assert model.phases()[0].learning_rate == ("mask_learning_rate",) and model.phases()[0].epochs == "mask_epochs"
    assert all(isinstance(layer, WSNLinear) for layer in model.supermask_layers().values())
    assert model.supermask_layers()
    with pytest.raises(ValueError, match="method"):
        WSNConfig(method="exssnet")
    with pytest.raises(ValueError, match="method"):
        ExSSNetConfig(method="wsn")
    with pytest.raises(ValueError, match="implies"):
        get_method("wsn").make_config({"method": "exssnet"})
    with pytest.raises(ValueError, match="no phase 'mask'"):
        model.add_task("a", 3)
        model.begin_mask_phase()


def test_parameter_groups_split_scores_and_values():
    model = make("bert", task_norms=True)
    model.add_task("a", 3)
    model.begin_train_phase()
    (mask_lr, scores), (weight_lr, values) = model.parameter_groups("train")
    layers = model.supermask_layers().values()
    assert mask_lr == ("mask_learning_rate",) and weight_lr == ("weight_learning_rate",)
    assert {id(p) for p in scores} == {id(layer.scores) for layer in layers}
    norms = [t for norm in model.task_norm_layers().values() for t in (norm.learning_weight, norm.learning_bias)]
    assert {id(p) for p in values} == {id(layer.exclusive_values) for layer in layers} | {id(t) for t in norms}
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in scores + values} | {id(p) for p in model.head_parameters("a")}


def test_joint_gradients():
    """Scores get grad * W' (straight through), the free values grad * mask; positions earlier tasks hold get nothing."""
    weight = torch.randn(5, 4, requires_grad=True)
    scores = torch.randn(5, 4, requires_grad=True)
    mask = torch.rand(5, 4) > 0.5
    grad = torch.randn(5, 4)
    JointMaskedWeight.apply(weight, scores, mask).backward(grad)
    assert torch.equal(scores.grad, grad * weight.detach())
    assert torch.equal(weight.grad, grad * mask)

    model = make("bert")
    learn(model, "a", *BATCHES["a"])
    model.add_task("b", 2)
    model.begin_train_phase()
    model.train()
    ids, attention, labels = BATCHES["b"][0]
    model(ids, attention, labels=labels).loss.backward()
    for name, layer in model.supermask_layers().items():
        held = layer.union_mask(1)
        assert torch.equal(layer.free_mask, ~held), name
        assert layer.exclusive_values.numel() == int((~held).sum())
        assert layer.scores.grad.abs().sum() > 0 and layer.exclusive_values.grad.abs().sum() > 0, name
        assert layer.weight.grad is None
        # Gradient only at free positions inside the current mask.
        outside = ~layer.current_mask()[layer.free_mask]
        assert not layer.exclusive_values.grad[outside].any(), name


# --- zero forgetting -------------------------------------------------------------------------------------
def test_old_task_logits_unchanged(arch):
    model = make(arch)
    learn(model, "a", *BATCHES["a"])
    logits_a = logits_of(model, "a", BATCHES["a"][0])
    head_a = {k: v.clone() for k, v in model.heads["0"].state_dict().items()}
    learn(model, "b", *BATCHES["b"])
    assert torch.equal(logits_of(model, "a", BATCHES["a"][0]), logits_a)
    for k, v in model.heads["0"].state_dict().items():
        assert torch.equal(v, head_a[k])


@pytest.mark.parametrize("values_dtype", [None, "float16"])
def test_phase_trains_scores_and_values(arch, values_dtype):
    model = make(arch, values_dtype=values_dtype)
    model.add_task("a", 3)
    model.begin_train_phase()
    layers = model.supermask_layers()
    scores = {n: layer.scores.detach().clone() for n, layer in layers.items()}
    values = {n: layer.exclusive_values.detach().clone() for n, layer in layers.items()}
    train_steps(model, BATCHES["a"][0], 3, lr=LR, weight_decay=WEIGHT_DECAY)
    for name, layer in layers.items():
        assert not torch.equal(layer.scores, scores[name]), name
        assert not torch.equal(layer.exclusive_values, values[name]), name
    # finish_task keeps what the phase computed: exactly (values_dtype None), or rounded to float16 (the default),
    # which moves the task's logits by rounding error only.
    before = logits_of(model, "a", BATCHES["a"][0])
    model.finish_task()
    if values_dtype is None:
        assert torch.equal(logits_of(model, "a", BATCHES["a"][0]), before)
    else:
        torch.testing.assert_close(logits_of(model, "a", BATCHES["a"][0]), before, atol=1e-2, rtol=0)
        for name, owned in model.exclusive_mask("a").items():
            trained = layers[name].weight[owned]
            assert torch.equal(trained.half().float(), trained), name  # the values it keeps are float16 numbers


def test_trained_positions_are_owned_and_the_rest_pretrained(arch):
    model = make(arch)
    pristine = tiny_encoder(arch)
    learn(model, "a", *BATCHES["a"])
    mask_a = model.task_mask("a")
    before = weights_of(model)
    learn(model, "b", *BATCHES["b"])
    mask_b, owned_b = model.task_mask("b"), model.exclusive_mask("b")
    assert any((mask_a[n] & mask_b[n]).any() for n in mask_a), "b's mask should reuse some of a's weights"
    for name, layer in model.supermask_layers().items():
        changed = layer.weight.detach() != before[name]
        assert changed.any(), name
        assert not (changed & mask_a[name]).any(), f"{name}: b changed a weight a's mask holds"
        assert not (changed & ~owned_b[name]).any(), f"{name}: b changed a weight it does not own"
        outside = ~(mask_a[name] | mask_b[name])
        assert torch.equal(layer.weight[outside], pristine.get_submodule(name).weight.detach()[outside]), name


# --- checkpoints, export, discard, storage ------------------------------------------------------------------
def test_save_load_reproduces_every_task(arch, tmp_path):
    model = make(arch)
    for name, (batch, labels) in BATCHES.items():
        learn(model, name, batch, labels)
    model.save_pretrained(str(tmp_path / "ckpt"))
    loaded = load_pretrained(str(tmp_path / "ckpt"), encoder=tiny_encoder(arch))
    assert isinstance(loaded, WSNModel) and loaded.config == model.config and loaded.tasks == ["a", "b"]
    for name, (batch, _) in BATCHES.items():
        assert torch.equal(logits_of(loaded, name, batch), logits_of(model, name, batch)), name
    for name, layer in loaded.supermask_layers().items():
        assert torch.equal(layer.weight, model.supermask_layers()[name].weight), name


def test_export_matches_logits(arch):
    model = make(arch)
    for name, (batch, labels) in BATCHES.items():
        learn(model, name, batch, labels)
    for name, (batch, _) in BATCHES.items():
        exported = model.export_task(name).eval()
        with torch.no_grad():
            got = exported(input_ids=batch[0], attention_mask=batch[1]).logits
        expected = logits_of(model, name, batch)
        assert torch.allclose(got, expected, atol=1e-5), (arch, name, (got - expected).abs().max())


def test_discard_task_leaves_finished_tasks(arch):
    model = make(arch)
    learn(model, "a", *BATCHES["a"])
    expected, weights = logits_of(model, "a", BATCHES["a"][0]), weights_of(model)
    model.add_task("b", 2)
    model.begin_train_phase()
    train_steps(model, BATCHES["b"][0], 2, lr=LR, weight_decay=WEIGHT_DECAY)
    model.discard_task()
    assert model.tasks == ["a"]
    assert torch.equal(logits_of(model, "a", BATCHES["a"][0]), expected)
    for name, layer in model.supermask_layers().items():
        assert torch.equal(layer.weight, weights[name]), name
        assert layer.scores is None and layer.exclusive_values is None and layer.free_mask is None
    learn(model, "b", *BATCHES["b"])  # the slot is free again
    assert torch.equal(logits_of(model, "a", BATCHES["a"][0]), expected)


def test_task_storage_is_mask_values_and_head():
    model = make("bert", density=0.1)
    for name, (batch, labels) in BATCHES.items():
        learn(model, name, batch, labels)
    layers = model.supermask_layers()
    for task in model.tasks:
        storage = model.task_storage_bytes(task)
        index = model.task_index(task)
        # Each mask deflated, alone (`mask`) or XOR the previous task's (`maskxor`), whichever is shorter.
        assert {"head", "values", "total"} < set(storage) <= {"head", "mask", "maskxor", "values", "total"}
        assert (index == 0) <= ("maskxor" not in storage)
        stored = [min(deflate_packed(layer.packed_mask(index)).numel(),
                      deflate_packed(layer.packed_mask(index), layer.packed_mask(index - 1)).numel() if index else 1 << 60)
                  for layer in layers.values()]
        mask_bytes = storage.get("mask", 0) + storage.get("maskxor", 0)
        assert mask_bytes == sum(stored) < sum((layer.weight.numel() + 7) // 8 for layer in layers.values())
        owned = sum(int(m.sum()) for m in model.exclusive_mask(task).values())
        assert storage["values"] == owned * 2  # float16, the default values_dtype
        assert storage["head"] == sum(t.numel() * t.element_size() for t in model.heads[str(index)].state_dict().values())
        assert storage["total"] == storage["head"] + mask_bytes + storage["values"]
    # Task a owns its whole mask; b owns only what a's mask does not hold.
    assert model.task_storage_bytes("a")["values"] == 2 * sum(layer.k for layer in layers.values())
    assert model.task_storage_bytes("b")["values"] < model.task_storage_bytes("a")["values"]


def test_kkt_transfer_starts_from_a_finished_mask():
    model = make("bert")
    learn(model, "a", *BATCHES["a"])
    model.add_task("b", 2)
    apply_transfer(model, ["a"])
    for name, mask in model.task_mask("b").items():
        assert torch.equal(mask, model.task_mask("a")[name]), name
    model.begin_train_phase()
    train_steps(model, BATCHES["b"][0], 2, lr=LR, weight_decay=WEIGHT_DECAY)
    model.finish_task()
    for name, layer in model.supermask_layers().items():
        assert int(unpack_bits(layer.packed_mask(1), layer.weight.shape).sum()) == layer.k, name
