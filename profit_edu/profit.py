"""PROFIT: progressive freezing of the most unstable layers, and the whole training schedule as data.

PROFIT (Park & Yoo, ECCV 2020) trains a 4-bit MobileNet in phases, lowering bits step by step with
BN-stabilisation around every change; at the PROFIT bit width it measures each layer's AIWQ, then fine-tunes
while freezing more and more of the most unstable layers' weights (notes E). The library writes it as five
modules, in the book's order; this one gathers their public names, so ``profit_edu.profit.X`` keeps working:

* :mod:`profit_edu.freezing` - AIWQ ranking -> frozen sets, and the random control (chapter 6);
* :mod:`profit_edu.recipe` - the recipe as frozen dataclasses, loaded from YAML with line numbers (chapter 7);
* :mod:`profit_edu.schedule` - a recipe's phases, and the plan ``profit-edu plan`` prints;
* :mod:`profit_edu.builders` - the model, init, teacher and data a recipe names;
* :mod:`profit_edu.pipeline` - :func:`run_recipe`, which trains every phase with :func:`profit_edu.train.fit`,
  resumably.
"""

from .builders import build_loaders, build_model, build_teacher, load_init
from .freezing import freeze_count, frozen_for_phase, make_tracker, random_freeze_order
from .pipeline import PhaseResult, RecipeResult, phase_config, prepare_model, run_recipe, set_phase_bits
from .recipe import ARCHS as ARCHS  # re-exported, as the names in __all__
from .recipe import DATASETS as DATASETS
from .recipe import (
    FREEZE_POLICIES,
    QUIRKS,
    RECIPE_DIR,
    RECIPE_MODES,
    RECIPE_VERSION,
    AIWQSpec,
    DataSpec,
    ModelSpec,
    OptimSpec,
    Recipe,
    RecipeError,
    ScheduleSpec,
    list_recipes,
    load_recipe,
    parse_recipe,
    recipe_path,
)
from .recipe import MAX_RECIPE_BYTES as MAX_RECIPE_BYTES
from .recipe import MAX_RECIPE_VALUES as MAX_RECIPE_VALUES
from .recipe import SECTIONS as SECTIONS
from .recipe import RecipeSource as RecipeSource
from .schedule import PHASE_KINDS as PHASE_KINDS
from .schedule import Phase, check_recipe_for_model, expand_phases, format_plan, plan_dict

__all__ = ["FREEZE_POLICIES", "QUIRKS", "RECIPE_DIR", "RECIPE_MODES", "RECIPE_VERSION", "AIWQSpec", "DataSpec",
           "ModelSpec", "OptimSpec", "Phase", "PhaseResult", "Recipe", "RecipeError", "RecipeResult", "ScheduleSpec",
           "build_loaders", "build_model", "build_teacher", "check_recipe_for_model", "expand_phases", "format_plan",
           "freeze_count", "frozen_for_phase", "list_recipes", "load_init", "load_recipe", "make_tracker",
           "parse_recipe", "phase_config", "plan_dict", "prepare_model", "random_freeze_order", "recipe_path",
           "run_recipe", "set_phase_bits"]
