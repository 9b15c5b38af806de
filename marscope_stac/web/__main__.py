"""``python -m marscope_stac.web``: fetch the web map's files from npm (``make install``)."""

from __future__ import annotations

from marscope_stac.web.assets import main

main()
