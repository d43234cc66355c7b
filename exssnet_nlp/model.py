"""`ExSSNetModel`: a BERT-family encoder with supermask layers and one head per task."""

from __future__ import annotations

import inspect
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .config import ExSSNetConfig
from .layers import MASK_PHASE, WEIGHT_PHASE, SupermaskLinear, TaskLayerNorm
from .masks import topk_mask_rows

CREATED = "created"
FINISHED = "finished"


@dataclass
class TaskInfo:
    """What the model knows of a task: its name, label set and where it is in learning."""

    name: str
    num_labels: int
    label_names: list[str] = field(default_factory=list)
    state: str = CREATED  # created -> mask -> (weight) -> finished

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Sentence vector of each sequence: the first token (`cls`) or the mean over real tokens (`mean`)."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TaskHead(nn.Module):
    """pool -> dropout -> dense -> activation -> dropout -> out: the layout of BERT's pooler plus
    classifier and of RoBERTa's classification head, so CLS-pooled tasks export exactly."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str, activation: str, dropout: float) -> None:
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.dropout(pool(hidden, attention_mask, self.pooling))
        x = self.dropout(self.activation(self.dense(x)))
        return self.out(x)


def task_seed(seed: int, name: str) -> int:
    """A task's own seed, from the run seed and its name: the same task starts the same in every run and copy."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def seeded_head(seed: int, name: str, build) -> nn.Module:
    """Build a head from the task's own RNG stream (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task_seed(seed, name))
        return build()


def _freeze_to_buffers(module: nn.Module) -> None:
    """Turn every parameter of `module` into a buffer: no optimizer, however built, can reach it."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach())


def _matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


class TaskRegistry:
    """Task bookkeeping shared by `ExSSNetModel` and the dense baselines (`task_infos`, `_current`)."""

    task_infos: list[TaskInfo]
    _current: int | None

    @property
    def tasks(self) -> list[str]:
        """Task names in learning order."""
        return [t.name for t in self.task_infos]

    @property
    def current_task(self) -> str | None:
        return None if self._current is None else self.task_infos[self._current].name

    @property
    def finished_tasks(self) -> list[str]:
        return [t.name for t in self.task_infos if t.state == FINISHED]

    @property
    def learning_task(self) -> str | None:
        """The task being learned (added, not yet finished), if any."""
        for info in self.task_infos:
            if info.state != FINISHED:
                return info.name
        return None

    def task_index(self, task: str | None = None) -> int:
        if task is None:
            if self._current is None:
                raise ValueError("no current task: call add_task(name, num_labels) or set_task(name) first.")
            return self._current
        for i, info in enumerate(self.task_infos):
            if info.name == task:
                return i
        raise ValueError(f"unknown task {task!r}; known tasks: {self.tasks}. Add it with add_task(name, num_labels).")

    def task_info(self, task: str | None = None) -> TaskInfo:
        return self.task_infos[self.task_index(task)]

    def set_task(self, name: str) -> None:
        """Make `name` the task that `forward` uses by default."""
        self._current = self.task_index(name)


class ExSSNetModel(TaskRegistry, nn.Module):
    """A shared encoder whose targeted linears hold one supermask per task, plus per-task heads.

    Learn a task with `add_task` -> `begin_mask_phase` -> (`begin_weight_phase`) -> `finish_task`.
    After `finish_task`, nothing the task uses can change: its mask is packed bits, its head is
    buffers, and later tasks train only weights outside every earlier mask (`method="exssnet"`).
    """

    def __init__(self, encoder: PreTrainedModel, config: ExSSNetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.model_type = getattr(encoder.config, "model_type", "unknown")
        self.heads = nn.ModuleDict()
        self.task_infos: list[TaskInfo] = []
        self._current: int | None = None
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        self._inject()
        self._encoder_args = set(inspect.signature(self.encoder.forward).parameters)

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, encoder: PreTrainedModel | str, config: ExSSNetConfig | None = None,
                     **from_pretrained_kwargs: Any) -> ExSSNetModel:
        """Wrap `encoder` (a model, or a Hub id / local path loaded with `AutoModel`)."""
        config = config or ExSSNetConfig()
        if isinstance(encoder, str):
            # float32 unless asked otherwise: transformers 5 keeps a half-precision checkpoint's dtype, and
            # masks and exclusive values would then train in fp16.
            from_pretrained_kwargs.setdefault("dtype", torch.float32)
            encoder = AutoModel.from_pretrained(encoder, **from_pretrained_kwargs)
        elif not isinstance(encoder, nn.Module):
            raise ValueError(f"encoder must be a transformers model, a Hub id or a path, not {type(encoder).__name__}.")
        # A task model (e.g. BertForSequenceClassification): keep only its encoder.
        base = getattr(encoder, "base_model", encoder)
        return cls(base, config)

    @property
    def base_model_name_or_path(self) -> str | None:
        """Where the encoder was loaded from (Hub id or path), if known."""
        return getattr(self.encoder.config, "_name_or_path", None) or None

    def _inject(self) -> None:
        targets = self.config.resolved_target_modules(self.model_type)
        replaced = []
        for name, module in list(self.encoder.named_modules()):
            if isinstance(module, nn.Linear) and _matches(name, targets):
                layer = SupermaskLinear(module, self.config.density, self.config.topk_method)
                if self.config.weight_init == "signed_constant":
                    with torch.no_grad():
                        std = layer.weight.float().std()
                        layer.weight.copy_((torch.sign(layer.weight.float()) * std).to(layer.weight.dtype))
                self._replace_submodule(name, layer)
                replaced.append(name)
        if not replaced:
            linears = [n for n, m in self.encoder.named_modules() if isinstance(m, nn.Linear)][:8]
            raise ValueError(f"target_modules={targets!r} matched no nn.Linear of this {self.model_type} encoder; "
                             f"its linear layers are named like {linears}.")
        self.target_module_names = replaced
        if self.config.task_norms:
            for name, module in list(self.encoder.named_modules()):
                if isinstance(module, nn.LayerNorm):
                    self._replace_submodule(name, TaskLayerNorm(module))
            if not self.task_norm_layers():
                raise ValueError(f"task_norms=True, but this {self.model_type} encoder has no nn.LayerNorm to copy per task.")

    def _replace_submodule(self, name: str, module: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.encoder.get_submodule(parent_name) if parent_name else self.encoder
        setattr(parent, child, module)

    def supermask_layers(self) -> dict[str, SupermaskLinear]:
        """Module name (within the encoder) -> its `SupermaskLinear`."""
        return {n: m for n, m in self.encoder.named_modules() if isinstance(m, SupermaskLinear)}

    def task_norm_layers(self) -> dict[str, TaskLayerNorm]:
        """Module name (within the encoder) -> its `TaskLayerNorm` (empty unless `config.task_norms`)."""
        return {n: m for n, m in self.encoder.named_modules() if isinstance(m, TaskLayerNorm)}

    def _layer_list(self) -> list[SupermaskLinear | TaskLayerNorm]:
        """Every per-task module (supermask layers first, then task norms)."""
        # Built once: walking every module on each forward cost ~10% of GPU fp32 inference.
        if getattr(self, "_layers_cache", None) is None:
            self._layers_cache = [*self.supermask_layers().values(), *self.task_norm_layers().values()]
        return self._layers_cache

    # --- tasks ------------------------------------------------------------------------------
    def add_task(self, name: str, num_labels: int, label_names: list[str] | None = None) -> None:
        """Add a task to learn next and make it current. Its scores start per `config.score_init`."""
        if not isinstance(name, str) or not name:
            raise ValueError("task name must be a non-empty string.")
        if name in self.tasks:
            raise ValueError(f"task {name!r} was already added; pick another name, or set_task({name!r}) to use it.")
        learning = self.learning_task
        if learning is not None:
            raise ValueError(f"task {learning!r} is still being learned; call finish_task() (or discard_task()) before adding {name!r}.")
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}.")
        label_names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
        if len(label_names) != num_labels:
            raise ValueError(f"label_names has {len(label_names)} names but num_labels={num_labels}.")
        index = len(self.task_infos)
        self.task_infos.append(TaskInfo(name, num_labels, label_names))
        hidden = self.encoder.config.hidden_size
        activation = self.config.resolved_head_activation(self.model_type)
        head = seeded_head(self.config.seed, name,
                           lambda: TaskHead(hidden, num_labels, self.config.pooling, activation, self.config.head_dropout))
        self.heads[str(index)] = head.to(self._device_dtype()[0])
        generator = torch.Generator().manual_seed(task_seed(self.config.seed, name))
        for layer in self.supermask_layers().values():
            layer.start_task(index, self.config.score_init, generator, self.config.reuse_score_scale)
        for norm in self.task_norm_layers().values():
            norm.start_task(index)
        self._set_requires_grad(index, None)
        self._current = index

    def discard_task(self) -> None:
        """Forget the task being learned (e.g. after a failed run); finished tasks are untouched."""
        name = self.learning_task
        if name is None:
            raise ValueError("no task is being learned; nothing to discard.")
        index = self.task_index(name)
        for layer in self._layer_list():
            layer.discard_task()
        del self.heads[str(index)]
        self.task_infos.pop(index)
        self._current = None if not self.task_infos else len(self.task_infos) - 1

    # --- phases -----------------------------------------------------------------------------
    def _learning_index(self, action: str, allowed_states: tuple[str, ...]) -> int:
        name = self.learning_task
        if name is None:
            raise ValueError(f"cannot {action}: no task is being learned; call add_task(name, num_labels) first.")
        index = self.task_index(name)
        state = self.task_infos[index].state
        if state not in allowed_states:
            raise ValueError(f"cannot {action} for task {name!r} in state {state!r}; allowed from: {', '.join(allowed_states)}.")
        return index

    def begin_mask_phase(self) -> None:
        """Train the current task's scores and head."""
        index = self._learning_index("begin_mask_phase", (CREATED,))
        for layer in self.supermask_layers().values():
            layer.begin_mask_phase()
        self.task_infos[index].state = MASK_PHASE
        self._set_requires_grad(index, MASK_PHASE)

    def begin_weight_phase(self) -> None:
        """Fix the mask; train the weights it may own (exclusive ones for exssnet) and the head."""
        if self.config.method == "supsup":
            raise ValueError("method='supsup' has no weight phase; call finish_task() after the mask phase.")
        index = self._learning_index("begin_weight_phase", (MASK_PHASE,))
        for layer in self.supermask_layers().values():
            layer.begin_weight_phase(exclusive=self.config.method == "exssnet")
        self.task_infos[index].state = WEIGHT_PHASE
        self._set_requires_grad(index, WEIGHT_PHASE)

    def finish_task(self) -> None:
        """Freeze the task for good: mask to packed bits, trained weights into place, head to buffers."""
        index = self._learning_index("finish_task", (MASK_PHASE, WEIGHT_PHASE))
        for layer in self._layer_list():
            layer.finish_task()
        _freeze_to_buffers(self.heads[str(index)])
        self.task_infos[index].state = FINISHED
        self._set_requires_grad(index, FINISHED)

    def _set_requires_grad(self, index: int, phase: str | None) -> None:
        for param in self.parameters():
            param.requires_grad_(False)
        if phase in (MASK_PHASE, WEIGHT_PHASE):
            for param in self.heads[str(index)].parameters():
                param.requires_grad_(True)
            for layer in self.supermask_layers().values():
                tensor = layer.scores if phase == MASK_PHASE else layer.exclusive_values
                if tensor is not None:
                    tensor.requires_grad_(True)
            for norm in self.task_norm_layers().values():  # a task's own norms train in both phases
                norm.learning_weight.requires_grad_(True)
                norm.learning_bias.requires_grad_(True)

    # --- masks ------------------------------------------------------------------------------
    def task_mask(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """Module name -> bool mask of `task` (finished, or the current mask of the one being learned)."""
        index = self.task_index(task)
        return {n: layer.task_mask(index) for n, layer in self.supermask_layers().items()}

    def exclusive_mask(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """Module name -> the weights `task` owns: its mask minus the union of earlier tasks' masks."""
        index = self.task_index(task)
        return {n: layer.task_mask(index) & ~layer.union_mask(index) for n, layer in self.supermask_layers().items()}

    def capacity(self) -> dict[str, dict[str, float]]:
        """Per layer: fraction of weights used by some finished task, and free for new ones."""
        stats = {}
        for name, layer in self.supermask_layers().items():
            used = float(layer.union_mask(layer.num_finished).float().mean()) if layer.num_finished else 0.0
            stats[name] = {"used": used, "free": 1.0 - used, "density": layer.k / layer.weight.numel()}
        return stats

    def task_storage_bytes(self, task: str) -> dict[str, int]:
        """Bytes a finished task adds to a checkpoint: packed masks, the weight values it owns, its head."""
        index = self.task_index(task)
        if self.task_infos[index].state != FINISHED:
            raise ValueError(f"task {task!r} is not finished; storage is defined for finished tasks.")
        mask_bytes = values_bytes = 0
        for layer in self.supermask_layers().values():
            mask_bytes += layer.packed_mask(index).numel()
            if self.config.method != "supsup":
                owned = layer.task_mask(index) & ~layer.union_mask(index)
                values_bytes += int(owned.sum()) * layer.weight.element_size()
        head_bytes = sum(t.numel() * t.element_size() for t in self.heads[str(index)].state_dict().values())
        norm_bytes = sum(t.numel() * t.element_size() for norm in self.task_norm_layers().values() for t in norm.task_affine(index))
        return {"mask": mask_bytes, "values": values_bytes, "head": head_bytes, "norms": norm_bytes,
                "total": mask_bytes + values_bytes + head_bytes + norm_bytes}

    # --- forward ----------------------------------------------------------------------------
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.encoder.parameters())
        return param.device, param.dtype

    def _activate(self, index: int) -> None:
        for layer in self._layer_list():
            layer.active_task = index

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, task: str | None = None) -> torch.Tensor:
        """Last hidden state of the encoder under `task`'s mask."""
        index = self.task_index(task)
        self._activate(index)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self._encoder_args:
            kwargs["token_type_ids"] = token_type_ids
        stepped = self._set_step_masks() if torch.is_grad_enabled() else []
        try:
            return self.encoder(**kwargs)[0]
        finally:
            for layer in stepped:
                layer.step_mask = None

    def _set_step_masks(self) -> list[SupermaskLinear]:
        """In the mask phase, select every layer's top-k for this step in one batched call per layer shape.

        Per-layer selection is ~13 small kernel launches per layer; on a GPU the launches, not the math,
        bound the step (measured on an H100: mask step 1.86x dense per layer, 1.21x batched).
        """
        training = [layer for layer in self._layer_list()
                    if isinstance(layer, SupermaskLinear) and layer.phase == MASK_PHASE and layer.active_task == layer.learning_task
                    and layer.scores is not None and layer.scores.requires_grad]
        groups: dict[tuple, list[SupermaskLinear]] = {}
        for layer in training:
            groups.setdefault((tuple(layer.scores.shape), layer.k, layer.topk_method, layer.scores.device), []).append(layer)
        for (shape, k, method, _), members in groups.items():
            rows = torch.stack([layer.scores.detach().abs().flatten() for layer in members])
            for layer, mask in zip(members, topk_mask_rows(rows, k, method), strict=True):
                layer.step_mask = mask.view(shape)
        return training

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                task: str | list[str] | None = None, **_: Any) -> SequenceClassifierOutput:
        """Logits of `task` (default: the current task); `task` may be one name per example."""
        if isinstance(task, (list, tuple)):
            return self._forward_mixed(input_ids, attention_mask, token_type_ids, labels, list(task))
        index = self.task_index(task)
        hidden = self.encode(input_ids, attention_mask, token_type_ids, task=self.task_infos[index].name)
        logits = self.heads[str(index)](hidden, attention_mask)
        loss = None
        if labels is not None:
            self._check_labels(labels, index)
            loss = F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _check_labels(self, labels: torch.Tensor, index: int) -> None:
        info = self.task_infos[index]
        if labels.device.type != "cpu":
            # Reading GPU values would stall every step; data.load_task has already checked the range.
            return
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= info.num_labels):
            raise ValueError(f"labels for task {info.name!r} must be in [0, {info.num_labels}); got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]. Check the label column or num_labels.")

    def _forward_mixed(self, input_ids, attention_mask, token_type_ids, labels, task_names):
        if len(task_names) != input_ids.shape[0]:
            raise ValueError(f"task has {len(task_names)} names for a batch of {input_ids.shape[0]} examples.")
        width = max(self.task_info(t).num_labels for t in set(task_names))
        logits = input_ids.new_full((len(task_names), width), float("-inf"), dtype=torch.float32)
        total_loss = None
        for name in dict.fromkeys(task_names):
            rows = torch.tensor([i for i, t in enumerate(task_names) if t == name], device=input_ids.device)
            picked = [None if x is None else x[rows] for x in (attention_mask, token_type_ids, labels)]
            out = self.forward(input_ids[rows], *picked, task=name)
            logits[rows, : out.logits.shape[1]] = out.logits.float()
            if out.loss is not None:
                part = out.loss * len(rows)
                total_loss = part if total_loss is None else total_loss + part
        loss = None if total_loss is None else total_loss / len(task_names)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    # --- checkpoints (implemented in checkpoint.py) ---------------------------------------
    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write a compact checkpoint (JSON + safetensors); see `exssnet_nlp.checkpoint`."""
        from .checkpoint import save_pretrained

        save_pretrained(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, checkpoint: str, revision: str | None = None, **kwargs: Any) -> ExSSNetModel:
        """Rebuild a model from `save_pretrained`'s directory or a Hub repo id."""
        from .checkpoint import load_pretrained

        return load_pretrained(checkpoint, revision=revision, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the checkpoint and a model card to the Hugging Face Hub."""
        from .checkpoint import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def export_task(self, task: str, output_dir: str | None = None) -> PreTrainedModel:
        """A plain `transformers` sequence-classification model for one task (weights merged)."""
        from .checkpoint import export_task

        return export_task(self, task, output_dir)

    # --- reporting --------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        # The shared encoder and every head; per-phase tensors (scores, trainable values) are not extra weights.
        per_phase = ("scores", "exclusive_values", "learning_weight", "learning_bias")
        total = sum(p.numel() for n, p in self.encoder.named_parameters() if not n.endswith(per_phase))
        total += sum(p.numel() for p in self.heads.parameters()) + sum(b.numel() for b in self.heads.buffers())
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}")
