"""Encoder references that travel: a Hub id, `pkg:MODULE` or a path, never a path inside one Python environment."""

from __future__ import annotations

import importlib
import sys
import sysconfig
from pathlib import Path

PACKAGE_PREFIX = "pkg:"


def resolve_reference(name: str | None) -> str | None:
    """The loadable path of `pkg:MODULE` (a model shipped inside an installed Python package: its
    `get_model_path()`, or its `model/` folder); anything else is returned as is."""
    if name is None or not str(name).startswith(PACKAGE_PREFIX):
        return name
    module_name = str(name)[len(PACKAGE_PREFIX):]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        dist = module_name.replace("_", "-")
        raise ValueError(f"model {name!r}: Python package {module_name!r} is not installed; run `pip install {dist}`.") from None
    if hasattr(module, "get_model_path"):
        return str(module.get_model_path())
    return str(Path(module.__file__).parent / "model")


def _site_dirs() -> list[Path]:
    dirs = {sysconfig.get_paths().get(key) for key in ("purelib", "platlib")}
    dirs |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return [Path(d).resolve() for d in dirs if d]


def portable_reference(reference: str | None) -> str | None:
    """`reference` as another machine can load it: a path inside an installed package becomes `pkg:MODULE`
    (when that name resolves back to the same path), another local directory an absolute path (a relative
    one would break from another working directory), a Hub id stays as it is."""
    if not reference:
        return reference
    if str(reference).startswith(PACKAGE_PREFIX):
        return str(reference)
    path = Path(reference).expanduser()
    if not path.is_dir():
        return str(reference)  # a Hub id
    resolved = path.resolve()
    for site in _site_dirs():
        if resolved.is_relative_to(site):
            module = resolved.relative_to(site).parts[0]
            candidate = PACKAGE_PREFIX + module
            try:
                back = resolve_reference(candidate)
            except ValueError:
                continue
            if back and Path(back).resolve() == resolved:
                return candidate
    return str(path.absolute())
