"""The output folder of a training run: what it may already hold before a run starts."""

from __future__ import annotations

import re
from pathlib import Path

from marscope_stac.core.errors import OutputError

__all__ = [
    "BEST_FILE",
    "BEST_FOLDER",
    "RUN_ENTRIES",
    "VALIDATOR_FILE",
    "check_run_folder",
    "prepare_run_folder",
]

BEST_FILE = re.compile(r"best-(\d+)\.pt")
"""The name of a best epoch's kept weights in a run's ``checkpoints/`` (``best-EPOCH.pt``)."""
VALIDATOR_FILE = "validation.json"
"""The settings a run's validation figures are read with, in its ``checkpoints/``."""
BEST_FOLDER = "best-validation"
"""The run folder's export of its best epoch's weights (beside ``model/``, the last epoch's)."""

RUN_ENTRIES = frozenset({"checkpoints", "model", BEST_FOLDER, "metrics.json", "training.png"})
"""What a training run writes at the top of its folder."""


def check_run_folder(out: str | Path) -> Path:
    """Refuse a training output that exists and is not a folder (a file, a FIFO, a device).

    Raises:
        OutputError: naming it and the fix.
    """
    path = Path(out)
    if str(out) == "" or (path.exists() and not path.is_dir()):
        raise OutputError(
            f"--out {out} is not a folder (it exists as something else, or is empty); give "
            "the folder of the training run"
        )
    return path


def prepare_run_folder(out: str | Path, *, make: bool = True) -> Path:
    """``out`` made ready for a run: new, empty, or an earlier run's folder (to resume).

    A folder holding anything a run does not write, or a run's file names without a run
    (no checkpoint, no best epoch's weights, no model), is a user's: nothing in it is
    replaced. With ``make`` the
    folder is made here, before the training, so an unusable path fails at once.

    Raises:
        OutputError: for such a folder, or a path that cannot be made.
    """
    path = check_run_folder(out)
    if path.is_dir():
        shown = [p for p in path.iterdir() if not p.name.startswith(".")]
        ckpt = path / "checkpoints"
        started = (
            (ckpt / "last.pt").is_file()
            or (ckpt / VALIDATOR_FILE).is_file()  # stopped before its first checkpoint
            or (ckpt.is_dir() and any(BEST_FILE.fullmatch(p.name) for p in ckpt.iterdir()))
            or (path / "model" / "open_clip_config.json").is_file()
        )
        if shown and (not started or any(p.name not in RUN_ENTRIES for p in shown)):
            raise OutputError(
                f"--out {out} holds files that are not a training run's; give a new or empty "
                "folder (or the folder of an earlier run, to resume it)"
            )
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot make the run folder {out}: {probe} is not a folder")
    if not make:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot make the run folder {out}: {exc.strerror or exc}; choose another --out"
        ) from None
    return path
