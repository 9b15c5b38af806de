"""The main job on the embedded default: the whole chain on the demo world, offline.

:func:`run_demo` is what ``make demo`` / ``marscope demo`` runs. It grows with the project:
today it builds (or reuses) the demo catalog and validates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from marscope_stac.demo.world import DemoCatalog, build_demo_catalog, existing_demo
from marscope_stac.validation import ValidationReport, validate_catalog

__all__ = ["DemoRun", "run_demo"]


@dataclass
class DemoRun:
    """What :func:`run_demo` produced."""

    catalog: DemoCatalog
    validation: ValidationReport
    steps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Lines for people: what was made and where."""
        lines = [self.catalog.summary(), self.validation.summary()]
        if self.catalog.previews:
            lines.append(f"  preview of one scene: {self.catalog.previews[0]}")
        return "\n".join(lines)


def run_demo(
    workdir: str | Path = ".", seed: int = 0, size: str = "default", progress: bool = True
) -> DemoRun:
    """Run the chain on the demo world under ``workdir`` (``catalogs/demo``, ``products/``).

    An existing demo catalog with the same seed and size is reused; one with other settings
    is rebuilt.
    """
    root = Path(workdir) / "catalogs" / "demo"
    record = existing_demo(root)
    from marscope_stac.demo.world import GENERATOR_VERSION

    wanted = {"seed": seed, "size": size, "generator_version": GENERATOR_VERSION}
    if record == wanted:
        catalog = DemoCatalog(root=root, seed=seed, size=size, reused=True)
        catalog.image_items = sorted(p.parent.name for p in root.glob("demo-ctx/*/*.json"))
        catalog.label_items = sorted(p.parent.name for p in root.glob("demo-labels/*/*.json"))
        catalog.previews = sorted(root.glob("demo-labels/*/preview.png"))
    else:
        catalog = build_demo_catalog(
            root, seed=seed, size=size, overwrite=record is not None, progress=progress
        )
    report = validate_catalog(root)
    return DemoRun(catalog=catalog, validation=report, steps=["demo-data", "validate"])
