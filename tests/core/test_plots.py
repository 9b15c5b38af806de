"""Pictures are drawn without noise about matplotlib's folders and without touching pyplot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
from marscope_stac.core.plots import figure, matplotlib
fig = figure(figsize=(2, 2))
fig.subplots().plot([0, 1], [0, 1])
fig.savefig(sys.argv[1])
print(matplotlib().get_backend() if 'matplotlib.pyplot' in sys.modules else 'no pyplot')
"""


def test_a_home_without_a_config_folder_draws_in_silence(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
    env["HOME"] = os.devnull  # matplotlib cannot make its folder there: it says so, we do not
    png = tmp_path / "plot.png"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(png)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.strip() == "no pyplot"  # the caller's backend is never switched
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
