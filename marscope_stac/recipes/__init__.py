"""Model recipes: a model rebuilt from one file, data to calibration, by one command.

A recipe (TOML; the bundled model's ships in the package) names the data to build, the
training settings shared by its members, the members (seed, length, source mix), how the
result is calibrated and, optionally, the validation data its figures are read on.
:func:`build_model` runs it; ``marscope build-model`` and ``make model`` call it.
"""

from __future__ import annotations

from marscope_stac.recipes.model import ModelBuild, build_model
from marscope_stac.recipes.recipe import Member, ModelRecipe, load_recipe

__all__ = ["Member", "ModelBuild", "ModelRecipe", "build_model", "load_recipe"]
