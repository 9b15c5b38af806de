"""Model folders derived from the tiny test model, for tests of averaging and releasing."""

from __future__ import annotations

import shutil
from pathlib import Path


def shifted_twin(model_dir: Path, dest: Path) -> Path:
    """A copy of ``model_dir`` at ``dest`` whose every floating-point weight is one larger.

    The same architecture with other weights: averaged with the original, each weight is the
    original's plus 0.5.
    """
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, dest)
    weights = dest / "open_clip_model.safetensors"
    base = load_file(weights)
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in base.items()}, weights)
    return dest
