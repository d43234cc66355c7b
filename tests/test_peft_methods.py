"""The PEFT-backed methods: `lora` (an adapter per task: zero forgetting) and `osf` (orthogonal subspace fine-tuning)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_batch, tiny_encoder, train_steps

from exssnet_nlp.checkpoint import seal_config
from exssnet_nlp.methods import get_method, load_pretrained
from exssnet_nlp.methods.lora import LoraMethodConfig
from exssnet_nlp.methods.osf import OSFMethodConfig
from exssnet_nlp.tasks import tensor_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


def learn(model, name: str, batch, steps: int = 3, lr: float = 1e-2, weight_decay: float = 0.1, optimizer: str = "adamw"):
    model.add_task(name, 3)
    for phase in model.phases():
        model.begin_phase(phase.name)
        train_steps(model, batch, steps, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
    model.finish_task()


def logits(model, batch, task: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch[0], batch[1], task=task).logits


# --- lora ------------------------------------------------------------------------------------------
def test_lora_isolation_round_trip_export_and_storage(arch, tmp_path):
    model = get_method("lora").build(tiny_encoder(arch))
    assert model.isolates_tasks and model.supports_export and model.phases()[0].learning_rate == ("adapter_learning_rate",)
    batch = random_batch()
    learn(model, "A", batch)
    before = logits(model, batch, "A")
    learn(model, "B", random_batch(seed=1))
    # B's adapter was trained (its lora_B left zero), yet A sees only its own: A's logits are bit-identical.
    assert torch.equal(logits(model, batch, "A"), before)
    assert any(layer.lora_B["task1"].weight.abs().sum() > 0 for layer in model.lora_layers().values())
    # Finished adapters are buffers: no optimizer can reach them.
    assert not [n for n, _ in model.named_parameters() if "lora_" in n]
    # A mixed batch runs each task's rows as a sub-batch: some CPUs' kernels round differently by batch shape (an Intel
    # Xeon did, by up to 6e-8), so it is compared as the masked methods' mixed batches are (tests/test_core.py).
    mixed = model(batch[0], batch[1], task=["A", "B"] * 4).logits
    assert torch.allclose(mixed[0::2], logits(model, batch, "A")[0::2], atol=1e-6)
    assert torch.allclose(mixed[1::2], logits(model, batch, "B")[1::2], atol=1e-6)

    # Storage: the adapter (r * (in + out) per targeted linear) plus the head.
    linears = [model.encoder.get_submodule(n).get_base_layer() for n in model.target_module_names]
    assert len(linears) == 8  # the attention preset: q, k, v and the output projection of 2 layers
    adapter = sum(8 * (m.in_features + m.out_features) * 2 for m in linears)  # float16 (values_dtype's default)
    head = tensor_bytes(dict(model.heads["0"].state_dict()))
    assert model.task_storage_bytes("A") == {"head": head, "lora": adapter, "total": head + adapter}
    assert all(k.startswith(("head.", "lora.")) and "task0" not in k for k in model.task_state("A"))
    # The base state is the plain encoder under its own names.
    assert {k: torch.equal(v, tiny_encoder(arch).state_dict()[k]) for k, v in model.base_state().items()} == \
        {k: True for k in tiny_encoder(arch).state_dict()}
    assert model.shared_state() == {}

    model.save_pretrained(str(tmp_path / "ckpt"))
    loaded = load_pretrained(str(tmp_path / "ckpt"), encoder=tiny_encoder(arch))
    assert type(loaded) is type(model) and loaded.tasks == ["A", "B"]
    for task in ("A", "B"):
        assert torch.equal(logits(loaded, batch, task), logits(model, batch, task)), task
    learn(loaded, "C", random_batch(seed=2))
    assert torch.equal(logits(loaded, batch, "A"), before)

    for task in ("A", "B"):
        exported = model.export_task(task)
        assert type(exported).__name__.endswith("ForSequenceClassification")
        with torch.no_grad():
            out = exported(input_ids=batch[0], attention_mask=batch[1]).logits
        assert torch.allclose(out, logits(model, batch, task), atol=1e-5), task
    assert torch.equal(logits(model, batch, "A"), before)  # exporting merged nothing into the model


def test_lora_trains_only_the_learning_adapter_whatever_forward_runs():
    model = get_method("lora").build(tiny_encoder("bert"), {"r": 4, "target_modules": "ffn"})
    batch = random_batch()
    learn(model, "A", batch)
    model.add_task("B", 3)
    assert not model.trainable_parameters()
    model.begin_phase("train")
    expected = {id(p) for _, params in model.parameter_groups("train") for p in params} | {id(p) for p in model.head_parameters("B")}
    assert {id(p) for p in model.trainable_parameters()} == expected and len(expected) == 2 * 4 + 4
    logits(model, batch, "A")  # switching adapters must not touch the trainable flags
    model.train()
    assert {id(p) for p in model.trainable_parameters()} == expected
    model.discard_task()
    assert model.tasks == ["A"] and all(list(layer.lora_A) == ["task0"] for layer in model.lora_layers().values())


def test_lora_refuses_bad_config_and_foreign_tensors():
    for bad in ({"r": 0}, {"r": 2.5}, {"r": True}, {"lora_alpha": 0}, {"lora_alpha": "16"}, {"lora_dropout": 1.0},
                {"lora_dropout": -0.1}, {"adapter_learning_rate": 0}, {"adapter_learning_rate": float("nan")},
                {"target_modules": 3}, {"target_modules": "("}, {"values_dtype": "float32"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LoraMethodConfig(**bad)
    assert LoraMethodConfig(target_modules=None).target_modules == "attention"
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        get_method("lora").build(tiny_encoder("bert"), {"target_modules": ["no_such_layer"]})
    model = get_method("lora").build(tiny_encoder("bert"))
    learn(model, "A", random_batch(), steps=1)
    other = get_method("lora").build(tiny_encoder("bert"), {"r": 4})
    with pytest.raises(Exception) as refused:
        other.install_task("A", 3, None, model.task_state("A"))
    # base.install_task's clean-up calls ModuleDict.pop(key, None), a TypeError that hides our ValueError as its context.
    error = refused.value if isinstance(refused.value, ValueError) else refused.value.__context__
    assert isinstance(error, ValueError) and "has shape (8, 32), expected (4, 32)" in str(error)
    assert all(not layer.lora_A for layer in other.lora_layers().values())  # the half-installed adapter is gone


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", None])
def test_lora_adapters_kept_in_values_dtype_are_served_as_stored(tmp_path, dtype):
    """values_dtype rounds a task's adapter when it finishes: the live adapter, the checkpoint (in that dtype) and
    the reloaded model agree exactly; None keeps the adapter exact (float32)."""
    model = get_method("lora").build(tiny_encoder("bert"), {"values_dtype": dtype})
    batch = random_batch()
    learn(model, "A", batch)
    stored = torch.float32 if dtype is None else getattr(torch, dtype)
    state = model.task_state("A")
    lora = {k: v for k, v in state.items() if k.startswith("lora.")}
    assert lora and all(v.dtype == stored for v in lora.values())
    for path, module in model._adapter_modules(0).items():
        for key, live in module.state_dict().items():
            assert live.dtype == torch.float32 and torch.equal(live, lora[f"lora.{path}.{key}"].float())
    assert model.task_storage_bytes("A")["lora"] == sum(v.numel() for v in lora.values()) * stored.itemsize
    loaded = load_pretrained(str(model.save_pretrained(str(tmp_path / "ckpt"))), encoder=tiny_encoder("bert"))
    assert loaded.config.values_dtype == dtype
    assert torch.equal(logits(loaded, batch, "A"), logits(model, batch, "A"))


def test_lora_values_dtype_conversion_old_checkpoints_and_refusals(tmp_path):
    """keep_values_in() rounds an exact model's adapters; a checkpoint saved before the field existed loads exact; a
    dtype set by hand (the live adapter not rounded) is refused at save; a tensor in another dtype is refused at load."""
    import json

    batch = random_batch()
    exact = get_method("lora").build(tiny_encoder("bert"), {"values_dtype": None})
    learn(exact, "A", batch)
    before = logits(exact, batch, "A")
    out = tmp_path / "old"
    exact.save_pretrained(str(out))
    path = out / "exssnet_config.json"
    data = json.loads(path.read_text())
    data["method_config"].pop("values_dtype")  # as saved before the field existed: exact float32 adapters
    path.write_text(json.dumps(seal_config(data)))
    old = load_pretrained(str(out), encoder=tiny_encoder("bert"))
    assert old.config.values_dtype is None and torch.equal(logits(old, batch, "A"), before)
    assert LoraMethodConfig().values_dtype == "float16"  # the default now

    old.keep_values_in("float16")
    assert old.config.values_dtype == "float16"
    assert all(v.dtype == torch.float16 for k, v in old.task_state("A").items() if k.startswith("lora."))
    torch.testing.assert_close(logits(old, batch, "A"), before, atol=1e-2, rtol=0)
    converted = load_pretrained(str(old.save_pretrained(str(tmp_path / "converted"))), encoder=tiny_encoder("bert"))
    assert torch.equal(logits(converted, batch, "A"), logits(old, batch, "A"))
    with pytest.raises(ValueError, match="not valid; allowed values: float16, bfloat16, or null"):
        exact.keep_values_in("int8")

    exact.config.values_dtype = "float16"  # by hand: the live adapter was not rounded
    with pytest.raises(ValueError, match="are not torch.float16 numbers.*keep_values_in"):
        exact.save_pretrained(str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()
    data = json.loads(path.read_text())
    data["method_config"]["values_dtype"] = "bfloat16"  # a config that disagrees with the stored float32 tensors
    path.write_text(json.dumps(seal_config(data)))
    with pytest.raises(ValueError, match="is torch.float32, but values_dtype 'bfloat16' stores torch.bfloat16"):
        load_pretrained(str(out), encoder=tiny_encoder("bert"))


# --- osf -------------------------------------------------------------------------------------------
def test_osf_lifecycle_growing_subspace_and_round_trip(tmp_path):
    model = get_method("osf").build(tiny_encoder("bert"))
    assert not model.isolates_tasks and model.phases()[0].learning_rate == ("osf_learning_rate", "weight_learning_rate")
    pristine = {k: v.clone() for k, v in model.shared_state().items()}
    assert len(pristine) == 12  # every attention and feed-forward linear of 2 layers (the `all` preset)
    batches = [random_batch(seed=i) for i in range(3)]
    for name, batch in zip("ABC", batches, strict=True):
        model.add_task(name, 3)
        assert len(model.osf_layers()) == 12
        model.begin_phase("train")
        train_steps(model, batch, 3, lr=1e-2, weight_decay=0.1)
        model.finish_task()
        # Merged and unloaded: a plain encoder again, nothing left to train.
        assert not model.osf_layers() and not hasattr(model.encoder, "peft_config") and not model.trainable_parameters()
    # Task i froze 16 + 3 i of each layer's 32 directions (0.5 and 0.1 of the smaller dimension).
    assert [model.task_metadata(t)["effective_rank"] for t in "ABC"] == \
        [{"32x32": r, "64x32": r, "32x64": r} for r in (16, 19, 22)]
    assert model.capacity()["encoder.layer.0.intermediate.dense"] == {"used": 25 / 32, "free": 7 / 32}
    assert any(not torch.equal(v, pristine[k]) for k, v in model.shared_state().items())
    storage = model.task_storage_bytes("A")
    assert storage == {"head": tensor_bytes(dict(model.heads["0"].state_dict())), "total": storage["head"]}

    # A discarded task leaves the shared weights as they were.
    shared = {k: v.clone() for k, v in model.shared_state().items()}
    model.add_task("D", 3)
    model.begin_phase("train")
    train_steps(model, batches[0], 2)
    model.discard_task()
    assert not model.osf_layers() and all(torch.equal(v, shared[k]) for k, v in model.shared_state().items())

    model.save_pretrained(str(tmp_path / "ckpt"))
    loaded = load_pretrained(str(tmp_path / "ckpt"), encoder=tiny_encoder("bert"))
    assert type(loaded) is type(model) and loaded.tasks == ["A", "B", "C"]
    for task in "ABC":
        assert torch.equal(logits(loaded, batches[0], task), logits(model, batches[0], task)), task
        assert loaded.task_metadata(task) == model.task_metadata(task)
    # The loaded model goes on exactly as the original would (same subspace for the next task, same result).
    for m in (model, loaded):
        torch.manual_seed(0)  # the same dropout masks
        learn(m, "D", batches[1])
    assert loaded.task_metadata("D") == model.task_metadata("D") == {"effective_rank": {"32x32": 25, "64x32": 25, "32x64": 25}}
    for task in "ABCD":
        assert torch.equal(logits(loaded, batches[0], task), logits(model, batches[0], task)), task
    exported = model.export_task("A")
    with torch.no_grad():
        out = exported(input_ids=batches[0][0], attention_mask=batches[0][1]).logits
    assert torch.allclose(out, logits(model, batches[0], "A"), atol=1e-5)


def _old_task_drift(name: str, optimizer: str) -> float:
    """Relative change of task A's logits while task B trains (5 steps, LR 1e-2), for method `name`."""
    model = get_method(name).build(tiny_encoder("bert"))
    probe = random_batch(seed=5)
    learn(model, "A", random_batch(seed=0), steps=5, optimizer=optimizer, weight_decay=0.0 if optimizer == "sgd" else 0.1)
    before = logits(model, probe, "A")
    learn(model, "B", random_batch(seed=1), steps=5, optimizer=optimizer, weight_decay=0.0 if optimizer == "sgd" else 0.1)
    return float((logits(model, probe, "A") - before).norm() / before.norm())


def test_osf_forgets_a_little():
    """Measured: with AdamW, fine-tuning moves A's logits by ~100% of their norm, OSF by ~1%; with SGD OSF's
    update stays in the trained subspace and A moves by ~1e-5 (AdamW's per-element scaling leaves the projected
    subspace, so some of its update reaches the frozen directions)."""
    osf, finetune = _old_task_drift("osf", "adamw"), _old_task_drift("finetune", "adamw")
    assert 0.0 < osf < 0.05 and finetune > 0.3 and osf < finetune / 20
    assert 0.0 < _old_task_drift("osf", "sgd") < 1e-3


def test_osf_gradient_projection_keeps_the_frozen_directions_under_sgd():
    model = get_method("osf").build(tiny_encoder("bert"))
    learn(model, "A", random_batch(), steps=2)
    model.add_task("B", 3)
    model.begin_phase("train")
    frozen = {}
    for name, layer in model.osf_layers().items():
        u, _, vh = torch.linalg.svd(layer.get_base_layer().weight.detach(), full_matrices=False)
        k = layer.effective_rank["osf"]
        frozen[name] = (u[:, :k], vh[:k])
    train_steps(model, random_batch(seed=1), 5, lr=1e-2, optimizer="sgd")
    checked = 0
    for name, layer in model.osf_layers().items():
        params = layer.osf_svd_params["osf"]
        du = params["U_low"].detach() - layer._osf_U_low_init["osf"]
        dv = params["V_low"].detach() - layer._osf_V_low_init["osf"]
        if du.norm() < 1e-5:  # the query/key factors of a tiny random model barely move: ratios would be float noise
            continue
        u_high, v_high = frozen[name]
        assert (u_high.T @ du).norm() < 0.02 * du.norm() and (dv @ v_high.T).norm() < 0.02 * dv.norm(), name
        checked += 1
    assert checked >= 4
    model.finish_task()


def test_osf_refuses_bad_config():
    for bad in ({"effective_rank": 0}, {"effective_rank": -0.5}, {"effective_rank": 1.5}, {"effective_rank": True},
                {"rank_increment": -0.1}, {"rank_increment": 2.5}, {"osf_learning_rate": 0}, {"target_modules": "("}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            OSFMethodConfig(**bad)
    config = OSFMethodConfig(effective_rank=4, rank_increment=0)
    assert (config.effective_rank, config.rank_increment) == (4, 0.0)
    assert [config.preserved_rank(i, 32) for i in (0, 5)] == [4, 4]
    assert [OSFMethodConfig(effective_rank=30, rank_increment=2).preserved_rank(i, 32) for i in range(3)] == [30, 31, 31]


def test_osf_checkpoint_without_its_ranks_is_refused(tmp_path):
    """The ranks a task kept frozen come back from its metadata; a config JSON without them is refused, not guessed."""
    import json

    model = get_method("osf").build(tiny_encoder("bert"))
    model.add_task("A", 3)
    model.begin_phase("train")
    train_steps(model, random_batch(), 1)
    model.finish_task()
    model.save_pretrained(str(tmp_path / "ckpt"))
    loaded = load_pretrained(str(tmp_path / "ckpt"), encoder=tiny_encoder("bert"))
    assert loaded.task_metadata("A") == model.task_metadata("A")
    path = tmp_path / "ckpt" / "exssnet_config.json"
    data = json.loads(path.read_text())
    data["tasks"][0]["metadata"] = {}
    path.write_text(json.dumps(seal_config(data)))
    with pytest.raises(ValueError, match="OSF ranks"):
        load_pretrained(str(tmp_path / "ckpt"), encoder=tiny_encoder("bert"))
