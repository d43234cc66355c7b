"""The dense baselines' settings: only those every method shares (pooling, head)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import MethodConfig


@dataclass
class DenseConfig(MethodConfig):
    """The dense baselines have only the settings every method shares (pooling, head)."""
