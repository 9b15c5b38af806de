"""A training run's checkpoint (``checkpoints/last.pt``): written atomically, read with care.

A checkpoint holds the model and optimiser states, the epochs done, the history, every
random state and the run's config; a damaged or foreign file is refused in one line.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marscope_stac.core.errors import ModelError
from marscope_stac.core.fs import atomic_write_bytes

__all__ = ["checkpoint_context", "read_checkpoint", "rng_state", "save_checkpoint", "saved_context"]


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """Every random state a run draws from, so a resumed run goes on exactly as it would."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": rng.bit_generator.state,
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a stopped run leaves the last whole one."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_context(path: Path) -> float | None:
    """The tile context a checkpoint was trained with (None: no readable checkpoint there)."""
    if not path.is_file():
        return None
    try:
        return saved_context(torch.load(path, map_location="cpu", weights_only=False, mmap=True))
    except Exception:  # a damaged checkpoint: the resume reports it in one line
        return None


def saved_context(state: dict[str, Any]) -> float:
    """The tile context recorded in a checkpoint's config (0 for runs before it was).

    Raises:
        ModelError: if the config records something else than a number there.
    """
    config = state.get("config")
    value = config.get("tile_context") if isinstance(config, dict) else None
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        raise ModelError(f"its tile context is {value!r}, not a number") from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state: a dict with the keys a resumed run reads.

    Raises:
        ModelError: if the file is not one (cut short, overwritten, another format).
    """
    try:  # read on the CPU: a device out of memory is not a damaged file
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, MemoryError):
        raise  # it could not be read (permissions, the disk, memory): nothing says damaged
    except Exception as exc:  # unpickling a damaged file fails in many ways
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
        raise ModelError(
            f"checkpoint {path} is damaged ({why}); move it aside (or use another --out) "
            "to train from the start"
        ) from exc
    keys = ("model", "optimizer", "epoch", "history", "rng")
    if not isinstance(state, dict) or not all(k in state for k in keys):
        raise ModelError(
            f"checkpoint {path} is not a training checkpoint of this program; "
            "use another --out or delete it"
        )
    if not isinstance(state["rng"], dict):
        raise ModelError(f"checkpoint {path} is damaged (no random states); delete it")
    try:
        saved_context(state)
    except ModelError as exc:
        raise ModelError(f"checkpoint {path} is damaged ({exc}); delete it") from None
    return state


RESUME_SETTINGS = ("steps_per_epoch", "batch_size", "lr", "weight_decay", "warmup_steps", "seed")
"""Settings a run must resume with as it started (more or fewer epochs are a choice)."""


def changed_settings(state: dict[str, Any], config: Any) -> list[str]:
    """The settings of :data:`RESUME_SETTINGS` and ``lock_text`` that ``config`` changes.

    Each as ``setting SAVED (not NEW)``; checkpoints that do not record one pass it.
    """
    saved = state.get("config")
    changed = []
    for name in (*RESUME_SETTINGS, "lock_text"):
        if isinstance(saved, dict) and name in saved and saved[name] != getattr(config, name):
            changed.append(f"{name.replace('_', ' ')} {saved[name]} (not {getattr(config, name)})")
    return changed
