"""Method name -> (config class, model class): how the trainer, the checkpoint loader and the CLI find a method.

A method registers itself when its module is imported (`methods/__init__.py` imports the built-in ones):

    register_method("mymethod", MyConfig, MyModel, description="...")

Nothing else is edited to add one. A method outside this package is found without an import in your code when
its package names its module under the entry-point group `exssnet_nlp.methods` (pyproject.toml:
`[project.entry-points."exssnet_nlp.methods"] mymethod = "my_package.my_method"`), or when the environment
variable EXSSNET_NLP_PLUGINS lists its module (comma-separated): both are imported on the first lookup of a name
not built in, so the CLI and checkpoint loading find it too.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field, fields
from typing import Any

_REGISTRY: dict[str, MethodSpec] = {}
PLUGIN_GROUP, PLUGIN_ENV = "exssnet_nlp.methods", "EXSSNET_NLP_PLUGINS"
# Trainer settings a method may default for itself, with the trainer's default where it does not: the evidence
# grid's 2 + 2 epochs, at which every method was compared, each phase's last state kept, and the usual fine-tuning LR.
TRAINER_DEFAULTS: dict[str, Any] = {"mask_epochs": 2.0, "weight_epochs": 2.0, "load_best_in_phase": False,
                                    "weight_learning_rate": 5e-5}
_plugins_loaded = False
logger = logging.getLogger("exssnet_nlp")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its classes, the config values its name implies, and a one-line description."""

    name: str
    config_class: type
    model: type | str  # the class, or "package.module:Class", imported on first use (configs and --help need no torch)
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # The trainer settings this method trains with by default (names in TRAINER_DEFAULTS), where its measured best
    # differs from the trainer's default: a value, or a function of the method's config where the best depends on it.
    trainer_defaults: dict[str, Any] = field(default_factory=dict)

    def trainer_default(self, name: str, config: Any) -> Any:
        """This method's default for trainer setting `name` (one of `TRAINER_DEFAULTS`) with method config `config`."""
        value = self.trainer_defaults.get(name, TRAINER_DEFAULTS[name])
        return value(config) if callable(value) else value

    @property
    def model_class(self) -> type:
        if isinstance(self.model, str):
            module, _, name = self.model.partition(":")
            model_class = getattr(importlib.import_module(module), name)
            _check_model_class(model_class)
            object.__setattr__(self, "model", model_class)
        return self.model  # type: ignore[return-value]

    def config_fields(self) -> list:
        """The config's fields a user sets (the ones the method name implies are left out)."""
        return [f for f in fields(self.config_class) if f.init and f.name not in self.defaults]

    def make_config(self, values: dict[str, Any] | Any | None = None, **overrides: Any) -> Any:
        """The method's config from a dict (or a config instance), with the values its name implies."""
        if hasattr(values, "to_dict"):  # a config instance, this method's class or a parent's (ExSSNetConfig for ssnet)
            values = values.to_dict()
        data = {**dict(values or {}), **overrides}
        clash = {k: v for k, v in self.defaults.items() if k in data and data[k] != v}
        if clash:
            raise ValueError(f"method {self.name!r} implies {self.defaults}; got {clash}. Pick the method by name instead.")
        return self.config_class.from_dict({**data, **self.defaults})

    def build(self, encoder: Any, config: Any | None = None, **from_pretrained_kwargs: Any) -> Any:
        """The model for this method around `encoder` (a model, or a Hub id / path)."""
        return self.model_class.from_encoder(encoder, self.make_config(config), **from_pretrained_kwargs)


def _check_model_class(model_class: type) -> None:
    for attr in ("from_encoder", "phases", "add_task", "begin_phase", "finish_task", "discard_task", "task_state", "install_task"):
        if not callable(getattr(model_class, attr, None)):
            raise ValueError(f"{model_class.__name__} lacks {attr}(); subclass exssnet_nlp.methods.base.ContinualModel.")


def register_method(name: str, config_class: type, model_class: type | str, *, defaults: dict[str, Any] | None = None,
                    description: str = "", trainer_defaults: dict[str, Any] | None = None) -> MethodSpec:
    """Make method `name` available to the trainer, the CLI and checkpoint loading.

    `model_class` may be given as "package.module:Class": it is then imported on first use, so reading the
    method's settings (YAML, `--help`) does not import torch. `trainer_defaults` gives the method's own default of
    trainer settings named in `TRAINER_DEFAULTS` (epochs, `load_best_in_phase`, `weight_learning_rate`), used when
    the run leaves them unset: a value, or a function of the method's config (e.g. `lambda c: c.density >= 0.3`).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"method name {name!r} must be an identifier (letters, digits, underscores).")
    if isinstance(model_class, str):
        if ":" not in model_class:
            raise ValueError(f"model_class {model_class!r} must be a class or 'package.module:ClassName'.")
    else:
        _check_model_class(model_class)
    if name in _REGISTRY and _REGISTRY[name].model != model_class and _REGISTRY[name].model_class is not model_class:
        raise ValueError(f"method {name!r} is already registered to {_REGISTRY[name].model_class.__name__}.")
    unknown = sorted(set(trainer_defaults or {}) - set(TRAINER_DEFAULTS))
    if unknown:
        raise ValueError(f"trainer_defaults={trainer_defaults!r}: only {', '.join(TRAINER_DEFAULTS)} have per-method "
                         f"defaults, not {unknown}.")
    spec = MethodSpec(name, config_class, model_class, dict(defaults or {}), description, dict(trainer_defaults or {}))
    _REGISTRY[name] = spec
    return spec


def load_plugins() -> None:
    """Import the plug-in methods' modules (entry-point group `exssnet_nlp.methods`, then $EXSSNET_NLP_PLUGINS), once.

    A plug-in that fails to import is logged and skipped: the other methods stay usable.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    sources = [(f"entry point {ep.name!r} ({ep.value})", ep.load) for ep in entry_points(group=PLUGIN_GROUP)]
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
        sources.append((f"{PLUGIN_ENV} module {module!r}", lambda module=module: importlib.import_module(module)))
    for where, load in sources:
        try:
            load()
        except Exception as err:  # noqa: BLE001  (any error of third-party code: report it, keep the built-in methods)
            logger.warning("plug-in method %s failed to import and is skipped: %s: %s", where, type(err).__name__, err)


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"method={name!r} is not a registered method; available: {', '.join(method_names())}. A method "
                         f"of your own: import its module first, or name it in ${PLUGIN_ENV}.") from None


def method_names() -> list[str]:
    load_plugins()
    return list(_REGISTRY)
