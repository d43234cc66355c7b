"""The core: exact masks, straight-through gradients, exclusive training and zero forgetting."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import learn_task, random_batch, tiny_encoder, train_steps

from exssnet_nlp.masks import deflate_packed, inflate_packed, num_kept, pack_bits, topk_mask, unpack_bits
from exssnet_nlp.methods import get_method
from exssnet_nlp.methods.supermask import ExSSNetConfig, ExSSNetModel

pytestmark = pytest.mark.usefixtures("one_thread")


def make(arch: str, method: str = "exssnet", density: float = 0.1, **kw) -> ExSSNetModel:
    """Through the registry, as the trainer and the checkpoint loader build models: the method name sets `method`."""
    model = get_method(method).build(tiny_encoder(arch), {"density": density, **kw})
    assert isinstance(model, ExSSNetModel) and model.config.method == method
    return model


def logits_of(model: ExSSNetModel, task: str, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch[0], batch[1], task=task).logits.clone()


# --- mask functions --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["topk", "kthvalue", "sort", "auto"])
def test_topk_mask_is_exact_and_method_independent(method):
    scores = torch.randn(37, 19)
    scores[0, :10] = 0.5  # ties at the threshold
    scores[1, :10] = -0.5
    for k in (1, 7, 20, 300, scores.numel()):
        mask = topk_mask(scores, k, method)
        assert int(mask.sum()) == k
        assert torch.equal(mask, topk_mask(scores, k, "sort"))
        if k < scores.numel():
            assert scores.abs()[mask].min() >= scores.abs()[~mask].max()


def test_ties_go_to_lowest_index():
    scores = torch.ones(10)
    assert topk_mask(scores, 3, "topk").tolist() == [True] * 3 + [False] * 7


@pytest.mark.parametrize("shape", [(8,), (3, 5), (17, 3), (64, 32)])
def test_pack_unpack_round_trip(shape):
    mask = torch.rand(shape) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_bits(packed, shape), mask)
    with pytest.raises(ValueError, match="uint8 bytes"):
        unpack_bits(packed[:-1], shape)


@pytest.mark.parametrize("density", [0.05, 0.1, 0.3, 0.5])
def test_deflated_masks_round_trip_and_are_never_larger(density):
    mask = torch.rand(384, 1536, generator=torch.Generator().manual_seed(0)) < density
    packed = pack_bits(mask)
    stored = deflate_packed(packed)
    assert stored.dtype == torch.uint8 and stored.dim() == 1 and stored.numel() <= packed.numel()
    if density <= 0.3:  # entropy H(p) < 0.9 bits per weight: the stream is shorter
        assert stored.numel() < 0.9 * packed.numel()
    else:  # a coin-flip mask does not compress: stored raw, and read back as such
        assert torch.equal(stored, packed)
    assert torch.equal(inflate_packed(stored, packed.numel()), packed)
    assert torch.equal(unpack_bits(inflate_packed(stored, packed.numel()), mask.shape), mask)


def test_corrupt_deflated_masks_are_refused():
    import zlib

    packed = pack_bits(torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) < 0.05)
    need = packed.numel()
    stream = deflate_packed(packed)
    assert stream.numel() < need

    def blob(data: bytes) -> torch.Tensor:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    cases = [
        (torch.zeros(need + 1, dtype=torch.uint8), "at most 512 uint8 bytes"),
        (packed.float(), "at most 512 uint8 bytes"),
        (stream[:-4].clone(), "cut short after"),  # truncated
        (blob(b"\x00" * 20), "not a valid deflate stream"),
        (blob(zlib.compress(bytes(need - 3))), "inflates to 509 bytes, not the 512"),
        (blob(zlib.compress(bytes(10 * need))), "inflates to more than the 512 bytes"),  # bounded: never expands past need + 1
        (blob(zlib.compress(bytes(need)) + b"\x00"), "has 1 bytes after its deflate stream"),
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            inflate_packed(data, need)


# --- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("density", 0.0), ("density", 1.5), ("density", "x"), ("method", "packnet"),
                                         ("score_init", "zeros"), ("pooling", "max"), ("weight_init", "random"),
                                         ("topk_method", "heap"), ("target_modules", "(")])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        ExSSNetConfig(**{field: value})


def test_config_json_round_trip():
    config = ExSSNetConfig(density=0.05, method="ssnet", target_modules=["query", "value"], pooling="mean")
    assert ExSSNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="Unknown ExSSNetConfig field"):
        ExSSNetConfig.from_dict({"densty": 0.1})
    # The registry builds the same config from a dict or an instance (ssnet's own class, SSNetConfig, with the same
    # values); the method name implies `method`.
    spec = get_method("ssnet")
    made = spec.make_config(config.to_dict())
    assert made == spec.make_config(config) and type(made).__name__ == "SSNetConfig" and made.to_dict() == config.to_dict()
    assert get_method("supsup").make_config({"density": 0.05}).method == "supsup"
    with pytest.raises(ValueError, match="implies"):
        get_method("supsup").make_config({"method": "exssnet"})
    assert "method" not in {f.name for f in get_method("exssnet").config_fields()}


# --- injection ---------------------------------------------------------------------------------
def test_injection_targets_ffn_by_default_and_every_linear_with_null(arch):
    model = make(arch)
    assert len(model.supermask_layers()) == 2 * 2  # ffn in, ffn out per block: the default
    assert not any(p.requires_grad for p in model.parameters())
    everything = make(arch, target_modules=None)  # what null means, and meant by default before ffn
    assert len(everything.supermask_layers()) == 2 * 6  # q, k, v, attention output, ffn in, ffn out


@pytest.mark.parametrize("preset,per_block", [("all", 6), ("attention", 4), ("ffn", 2)])
def test_target_module_presets(arch, preset, per_block):
    model = make(arch, target_modules=preset)
    names = list(model.supermask_layers())
    assert len(names) == 2 * per_block
    attention = [n for n in names if ".attention." in n]
    assert len(attention) == 2 * {"all": 4, "attention": 4, "ffn": 0}[preset]
    # `--target_modules ffn` arrives from a command line as a one-element list
    assert ExSSNetConfig(target_modules=[preset]).target_modules == preset
    if preset == "all":  # what null means, and the same layers as the suffix list it replaced (old checkpoints load)
        model_type = make(arch).model_type
        suffixes = (["q_lin", "k_lin", "v_lin", "out_lin", "ffn.lin1", "ffn.lin2"] if model_type == "distilbert" else
                    ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"])
        assert names == list(make(arch, target_modules=None).supermask_layers()) == list(
            make(arch, target_modules=suffixes).supermask_layers())
    if preset == "ffn":  # the default
        assert names == list(make(arch).supermask_layers())


def test_presets_need_a_known_model_type():
    with pytest.raises(ValueError, match="presets are known only for model_type.*not 'gpt2'.*target_modules=\\[...\\]"):
        ExSSNetConfig().resolved_target_modules("gpt2")
    assert ExSSNetConfig(target_modules=["c_fc"]).resolved_target_modules("gpt2") == ["c_fc"]


def test_unknown_target_modules_error():
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        make("bert", target_modules=["nonexistent"])


def test_regex_target_modules():
    model = make("bert", target_modules=r".*attention\.self\.(query|value)")
    assert len(model.supermask_layers()) == 4


# --- masks per layer ----------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.03, 0.1, 0.5, 1.0])
def test_exact_density_per_layer(arch, density):
    model = make(arch, density=density)
    model.add_task("a", 3)
    for name, mask in model.task_mask("a").items():
        assert int(mask.sum()) == num_kept(mask.numel(), density), name
    model.begin_phase("mask")
    train_steps(model, random_batch())
    model.finish_task()
    for name, mask in model.task_mask("a").items():
        assert int(mask.sum()) == round(density * mask.numel()), name


def test_straight_through_gradient_reaches_scores(arch):
    model = make(arch)
    model.add_task("a", 3)
    model.begin_phase("mask")
    ids, mask, labels = random_batch()
    model(ids, mask, labels=labels).loss.backward()
    for name, layer in model.supermask_layers().items():
        assert layer.scores.grad is not None and layer.scores.grad.abs().sum() > 0, name
        assert layer.weight.grad is None


def test_exclusive_mask_is_mask_minus_union_of_earlier(arch):
    model = make(arch, density=0.3)
    for i, name in enumerate(["a", "b", "c"]):
        learn_task(model, name, random_batch(seed=i), 3)
    masks = {t: model.task_mask(t) for t in model.tasks}
    layers = model.supermask_layers()
    for t_index, task in enumerate(model.tasks):
        excl = model.exclusive_mask(task)
        for layer_name in excl:
            union = torch.zeros_like(excl[layer_name])
            for earlier in model.tasks[:t_index]:
                union |= masks[earlier][layer_name]
            assert torch.equal(excl[layer_name], masks[task][layer_name] & ~union)
            assert torch.equal(layers[layer_name].owned_mask(t_index), excl[layer_name])  # the one place it is computed
    # Ownership partitions the union: disjoint across tasks, and together exactly every weight some mask holds.
    for layer_name, layer in layers.items():
        owned = [model.exclusive_mask(t)[layer_name] for t in model.tasks]
        assert int(sum(o.long() for o in owned).max()) <= 1
        assert torch.equal(torch.stack(owned).any(0), layer.union_mask(len(model.tasks)))


def test_weight_phase_trains_only_exclusive_positions():
    model = make("bert", density=0.3)
    learn_task(model, "a", random_batch(seed=0), 3)
    before = {n: layer.weight.detach().clone() for n, layer in model.supermask_layers().items()}
    model.add_task("b", 2)
    model.begin_phase("mask")
    train_steps(model, random_batch(num_labels=2, seed=1))
    model.begin_phase("weight")
    for name, layer in model.supermask_layers().items():  # what the weight phase may train is exactly what b owns
        assert torch.equal(layer.exclusive_index, layer.owned_mask(1).flatten().nonzero().squeeze(1)), name
    train_steps(model, random_batch(num_labels=2, seed=1), lr=0.5, weight_decay=0.1)
    model.finish_task()
    excl = model.exclusive_mask("b")
    for name, layer in model.supermask_layers().items():
        changed = layer.weight.detach() != before[name]
        assert changed.any(), name
        assert not (changed & ~excl[name]).any(), f"{name}: a weight outside b's exclusive set changed"


# --- zero forgetting ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method,forgets", [("exssnet", False), ("supsup", False), ("ssnet", True)])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_old_task_logits_unchanged(arch, method, forgets, optimizer):
    model = make(arch, method=method, density=0.3)
    batch_a, batch_b = random_batch(seed=0), random_batch(num_labels=2, seed=1)
    learn_task(model, "a", batch_a, 3, optimizer=optimizer)
    logits_a = logits_of(model, "a", batch_a)
    head_a = {k: v.clone() for k, v in model.heads["0"].state_dict().items()}
    # Task 2 at a high learning rate with weight decay, every model parameter handed to the optimizer.
    learn_task(model, "b", batch_b, 2, lr=0.5, weight_decay=0.1, optimizer=optimizer)
    after = logits_of(model, "a", batch_a)
    assert torch.equal(after, logits_a) != forgets
    for k, v in model.heads["0"].state_dict().items():
        assert torch.equal(v, head_a[k])


def test_old_task_unchanged_in_train_mode_forward_too():
    model = make("bert", density=0.3)
    batch = random_batch()
    learn_task(model, "a", batch, 3)
    expected = logits_of(model, "a", batch)
    model.add_task("b", 2)
    model.begin_phase("mask")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch[0], batch[1], task="a").logits, expected)


# --- storage and caching -------------------------------------------------------------------------------
def test_packed_storage_per_finished_task():
    model = make("bert", density=0.1)
    batch = random_batch()
    learn_task(model, "a", batch, 3)
    learn_task(model, "b", batch, 3)
    for layer in model.supermask_layers().values():
        assert layer.scores is None and layer.exclusive_values is None
        for i in range(2):
            packed = layer.packed_mask(i)
            assert packed.dtype == torch.uint8
            assert packed.numel() == (layer.weight.numel() + 7) // 8  # 1 bit per weight, not 4 bytes
        assert "task_mask_1" in dict(layer.named_buffers())
    state = model.state_dict()
    assert any(k.endswith("task_mask_1") for k in state)
    assert not any(k.endswith("scores") for k in state)


def test_cached_masks_match_uncached(arch):
    model = make(arch)
    batch = random_batch()
    learn_task(model, "a", batch, 3)
    learn_task(model, "b", batch, 3)
    model.eval()
    for task in ("a", "b"):
        cached = logits_of(model, task, batch)
        for layer in model.supermask_layers().values():
            layer._invalidate()
        with torch.no_grad():
            model.set_task(task)
            uncached = model(batch[0], batch[1]).logits
        assert torch.equal(cached, uncached)
    # No top-k in eval forward: the cache key is stable across calls.
    layer = next(iter(model.supermask_layers().values()))
    key = layer._cache_key
    logits_of(model, "b", batch)
    assert layer._cache_key == key


def test_mixed_batch_matches_per_task():
    model = make("bert")
    batch = random_batch()
    learn_task(model, "a", batch, 3)
    learn_task(model, "b", random_batch(num_labels=2), 2)
    names = ["a", "b"] * 4
    model.eval()
    with torch.no_grad():
        mixed = model(batch[0], batch[1], task=names).logits
        a = model(batch[0], batch[1], task="a").logits
        b = model(batch[0], batch[1], task="b").logits
    assert torch.allclose(mixed[0::2, :3], a[0::2], atol=1e-6)
    assert torch.allclose(mixed[1::2, :2], b[1::2], atol=1e-6)
    assert torch.isinf(mixed[1::2, 2]).all()


# --- API errors --------------------------------------------------------------------------------------
def test_api_errors():
    model = make("bert")
    ids, mask, labels = random_batch()
    with pytest.raises(ValueError, match="no current task"):
        model(ids, mask)
    with pytest.raises(ValueError, match="no task is being learned"):
        model.begin_phase("mask")
    with pytest.raises(ValueError, match="no task is being learned"):
        model.begin_mask_phase()  # the wrapper says the same
    model.add_task("a", 3)
    with pytest.raises(ValueError, match="already added"):
        model.add_task("a", 3)
    with pytest.raises(ValueError, match="still being learned"):
        model.add_task("b", 3)
    with pytest.raises(ValueError, match="allowed from"):
        model.begin_phase("weight")
    with pytest.raises(ValueError, match="allowed from"):
        model.begin_weight_phase()
    with pytest.raises(ValueError, match="has no phase 'train'"):
        model.begin_phase("train")
    with pytest.raises(ValueError, match="unknown task"):
        model.set_task("zzz")
    model.begin_phase("mask")
    with pytest.raises(ValueError, match="allowed from"):
        model.begin_phase("mask")  # phases run once, in order
    with pytest.raises(ValueError, match=r"labels for task 'a' must be in \[0, 3\)"):
        model(ids, mask, labels=labels + 5)
    model.finish_task()
    with pytest.raises(ValueError, match="no task is being learned"):
        model.finish_task()
    supsup = make("bert", method="supsup")
    assert [p.name for p in supsup.phases()] == ["mask"] and [p.name for p in model.phases()] == ["mask", "weight"]
    supsup.add_task("a", 2)
    supsup.begin_mask_phase()
    with pytest.raises(ValueError, match="no weight phase"):
        supsup.begin_weight_phase()
    with pytest.raises(ValueError, match="has no phase 'weight'"):
        supsup.begin_phase("weight")


def test_trainable_parameters_per_phase(capsys):
    model = make("bert")
    model.add_task("a", 3)
    assert model.trainable_parameters() == []
    layers = model.supermask_layers().values()
    head = {id(p) for p in model.heads["0"].parameters()}
    for phase, attr in (("mask", "scores"), ("weight", "exclusive_values")):
        model.begin_phase(phase)
        assert model.task_info("a").state == phase
        own = {id(getattr(layer, attr)) for layer in layers}
        assert {id(p) for p in model.trainable_parameters()} == head | own
        # The phase's own groups hold exactly what it trains besides the head.
        groups = model.parameter_groups(phase)
        assert [settings for settings, _ in groups] == [None]
        assert {id(p) for _, params in groups for p in params} == own
    model.print_trainable_parameters()
    assert "trainable params" in capsys.readouterr().out
    model.finish_task()
    assert model.trainable_parameters() == []


def test_signed_constant_weight_init():
    model = make("bert", weight_init="signed_constant")
    for layer in model.supermask_layers().values():
        assert layer.weight.abs().unique().numel() == 1


def test_discard_task_keeps_finished_ones():
    model = make("bert")
    batch = random_batch()
    learn_task(model, "a", batch, 3)
    expected = logits_of(model, "a", batch)
    model.set_task("a")
    model.add_task("b", 2)
    model.begin_phase("mask")
    model.discard_task()
    assert model.tasks == ["a"] and model.current_task == "a" and model.learning_task is None
    assert "1" not in model.heads
    for layer in model.supermask_layers().values():
        assert layer.scores is None and layer.learning_task is None and layer.num_finished == 1
    assert torch.equal(logits_of(model, "a", batch), expected)
    # Discarding gives back the task that was current before the discarded one was added, not just the last one.
    learn_task(model, "b", random_batch(num_labels=2), 2)
    model.set_task("a")
    model.add_task("c", 2)
    assert model.current_task == "c"
    model.discard_task()
    assert model.tasks == ["a", "b"] and model.current_task == "a"


def test_batched_step_masks_match_per_layer_selection(arch):
    """The model's one-call-per-shape selection gives each layer exactly its own top-k and the same score gradients."""
    from exssnet_nlp.masks import topk_mask

    def reference(layer):  # the textbook straight-through estimator: forward the mask, backward identity
        def weight(task=None):
            hard = topk_mask(layer.scores, layer.k).to(layer.scores.dtype)
            return layer.weight * (hard + (layer.scores - layer.scores.detach()))  # forward: exactly `hard`
        return weight

    model = make(arch, score_init="kaiming_uniform")
    model.add_task("a", 3)
    model.begin_phase("mask")
    ids, mask, labels = random_batch()
    model.eval()  # no dropout: both passes see the same function
    model(ids, mask, labels=labels).loss.backward()
    batched = {n: layer.scores.grad.clone() for n, layer in model.supermask_layers().items()}
    model.zero_grad()
    # Reference: the plain straight-through estimator, layer by layer.
    for layer in model.supermask_layers().values():
        layer.effective_weight = reference(layer)
    model(ids, mask, labels=labels).loss.backward()
    for name, layer in model.supermask_layers().items():
        assert torch.equal(layer.scores.grad, batched[name]), name
        assert layer.step_mask is None  # cleared after every forward


# --- per-task norms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["exssnet", "supsup"])
def test_task_norms_keep_old_tasks_exact(arch, method):
    model = make(arch, method=method, density=0.3, task_norms=True)
    norms = model.task_norm_layers()
    assert len(norms) == 5  # the embeddings' norm + two per block
    shared = {n: (m.weight.clone(), m.bias.clone()) for n, m in norms.items()}
    batch_a, batch_b = random_batch(seed=0), random_batch(num_labels=2, seed=1)
    learn_task(model, "a", batch_a, 3)
    logits_a = logits_of(model, "a", batch_a)
    learn_task(model, "b", batch_b, 2, lr=0.5, weight_decay=0.1)
    assert torch.equal(logits_of(model, "a", batch_a), logits_a)
    for name, norm in norms.items():
        assert torch.equal(norm.weight, shared[name][0]) and torch.equal(norm.bias, shared[name][1]), name
        assert not torch.equal(norm.task_affine(0)[1], norm.task_affine(1)[1]), f"{name}: b's norm did not train"
        assert not any(isinstance(t, torch.nn.Parameter) for t in norm.task_affine(0))
    storage = model.task_storage_bytes("b")
    # By tensor-name prefix of the task's checkpoint tensors; supsup trains no weights, so stores no values.
    masks = {"mask", "maskxor"} & set(storage)  # each layer's mask alone or XOR task a's, whichever is shorter
    assert set(storage) == {"head", "norm", "total"} | masks | ({"values"} if method != "supsup" else set()) and masks
    assert storage["norm"] == sum(2 * m.weight.numel() * 4 for m in norms.values())
    assert sum(storage[k] for k in masks) == sum(min(deflate_packed(layer.packed_mask(1)).numel(),
                                                     deflate_packed(layer.packed_mask(1), layer.packed_mask(0)).numel())
                                                 for layer in model.supermask_layers().values())
    assert storage["head"] == sum(t.numel() * 4 for t in model.heads["1"].state_dict().values())
    if method != "supsup":
        assert storage["values"] == 2 * sum(int(m.sum()) for m in model.exclusive_mask("b").values())  # float16
    assert storage["total"] == sum(v for k, v in storage.items() if k != "total")


def test_task_norms_train_in_both_phases_and_not_by_default():
    assert make("bert").task_norm_layers() == {}
    model = make("bert", task_norms=True)
    model.add_task("a", 3)
    norm = next(iter(model.task_norm_layers().values()))
    for phase in ("mask", "weight"):
        model.begin_phase(phase)
        trainable = {id(p) for p in model.trainable_parameters()}
        assert id(norm.learning_weight) in trainable and id(norm.learning_bias) in trainable
    model.discard_task()
    assert norm.learning_weight is None and norm.num_finished == 0
    with pytest.raises(ValueError, match="task_norms"):
        ExSSNetConfig(task_norms="yes")


# --- where a new task's mask starts ----------------------------------------------------------------------
def test_reuse_score_scale_starts_new_tasks_on_free_weights(arch):
    batch = random_batch()
    plain, free = make(arch, density=0.3), make(arch, density=0.3, reuse_score_scale=0.0)
    for model in (plain, free):
        learn_task(model, "a", batch, 3)
        model.add_task("b", 3)
    # magnitude init: b starts mostly inside a's mask; with scale 0 it starts on weights a leaves free
    overlap = {n: (m & plain.task_mask("a")[n]).float().mean() / 0.3 for n, m in plain.task_mask("b").items()}
    assert min(overlap.values()) > 0.5
    for name, mask in free.task_mask("b").items():
        assert not (mask & free.task_mask("a")[name]).any(), name
        assert int(mask.sum()) == free.supermask_layers()[name].k
    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(ValueError, match="reuse_score_scale"):
            ExSSNetConfig(reuse_score_scale=bad)
