"""Every write that must never be seen half-done: files (temp + fsync + rename) and directories (swap)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | Callable[[Any], None]) -> Path:
    """Write `data` (bytes, or a function that writes to a binary handle) to a temp file beside `path`,
    fsync it, then `os.replace` it: readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays, torch tensors and paths turn up in results; store them as plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _strict(obj: Any) -> Any:
    """NaN and infinities become null: the file stays strict JSON that every reader accepts."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def json_bytes(obj: Any, indent: int | None = 2) -> bytes:
    text = json.dumps(_strict(json.loads(json.dumps(obj, default=_json_default))), indent=indent, ensure_ascii=False,
                      allow_nan=False)
    return (text + "\n").encode("utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Strict JSON to `path`, atomically."""
    return write_bytes_atomic(path, json_bytes(obj, indent))


def recover_directory(target: str | os.PathLike[str], complete: Callable[[Path], bool]) -> str | None:
    """Finish or undo a directory swap (`atomic_directory`) that a crash interrupted, and drop its leftovers.

    A swap writes `.<name>.tmp-*` (its last file marks it `complete`), renames `target` to `.<name>.old-*`,
    renames the temporary directory to `target`, then removes the old one. Killed between the two renames,
    `target` is missing: the newest complete temporary directory (else the old one) becomes `target` again.
    Returns "finished", "restored" or None (nothing to recover); leftovers are removed in every case.
    """
    target = Path(target).expanduser().absolute()
    if not target.parent.is_dir():
        return None

    def newest_first(pattern: str) -> list[Path]:
        found = [p for p in target.parent.glob(pattern) if p.is_dir()]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    tmps, olds = newest_first(f".{target.name}.tmp-*"), newest_first(f".{target.name}.old-*")
    action = None
    if not target.exists():
        source = next((p for p in tmps if complete(p)), None)
        action = "finished" if source is not None else None
        if source is None:
            source, action = next(((p, "restored") for p in olds if complete(p)), (None, None))
        if source is not None:
            os.rename(source, target)
    for leftover in tmps + olds:
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
    if action or tmps or olds:
        fsync_dir(target.parent)
    return action


def atomic_directory(target: str | os.PathLike[str], write: Callable[[Path], None], replaceable: Callable[[Path], bool],
                     what: str) -> Path:
    """Run `write(tmp)` in a fresh sibling directory, then swap it in for `target`.

    An existing `target` is swapped out only after `write` succeeded, and only if it is empty or
    `replaceable`. A failure removes the temporary directory; a crash leaves only a hidden
    `.<name>.tmp-*` sibling, never a half-written `target`.
    """
    target = Path(target).expanduser().absolute()
    recover_directory(target, replaceable)  # a crashed earlier swap first: never leave its leftovers behind
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{target} exists and is not a directory; choose another {what} path.")
        if any(target.iterdir()) and not replaceable(target):
            raise ValueError(f"{target} is a non-empty directory that does not hold a {what}; refusing to replace it. "
                             "Choose an empty or new directory.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        write(tmp)
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
