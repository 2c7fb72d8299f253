"""Writing checkpoints atomically (temp file + ``os.replace``) and capturing/restoring RNG state.

Everything saved is loadable with ``torch.load(weights_only=True)``: tensors, dicts, lists,
tuples, strings and numbers only (numpy RNG state is kept as the bit generator's dict).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from ood_perception.atomic import atomic_path


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``.

    A reader (or a resume after a kill) sees either the previous file or the new one, never half.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Global torch (CPU and CUDA) and Python RNG states plus an optional explicit generator."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
