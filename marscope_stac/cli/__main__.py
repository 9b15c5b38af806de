"""``python -m marscope_stac.cli``: the ``marscope`` command."""

from __future__ import annotations

import sys

from marscope_stac.cli import main

main(sys.argv[1:])
