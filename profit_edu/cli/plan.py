"""``profit-edu plan RECIPE``: print the phase timeline of a PROFIT recipe (a dry run); ``train --recipe`` runs it.

The recipe is a YAML file or the name of a shipped one (:func:`profit_edu.recipe.load_recipe`); a bad recipe is
reported with its file and line, and nothing is trained.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import CLIError, say

__all__ = ["add_plan_parser", "cmd_plan", "load_recipe"]


def add_plan_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``plan`` on the ``profit-edu`` subparsers (its handler: :func:`cmd_plan`)."""
    p = commands.add_parser(
        "plan", help="print the phase timeline of a PROFIT recipe (a dry run)",
        description=("Load a PROFIT recipe, check it, and print its phases: name, epochs, activation/weight bits, "
                     "what trains, how many layers are frozen, and the learning rate. Nothing is trained."),
        epilog="examples:\n  profit-edu plan mobilenet_v2_w4a4_imagenet\n  profit-edu plan my_recipe.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", metavar="RECIPE", help="a recipe file, or the name of a shipped recipe")
    p.add_argument("--json", action="store_true", help="print the recipe and its phases as JSON")
    p.set_defaults(handler=cmd_plan)


def load_recipe(name: str) -> Any:
    """The recipe ``name`` (a file or a shipped name); a missing or bad one is a :class:`CLIError`."""
    from .. import recipe

    try:
        return recipe.load_recipe(name)
    except (FileNotFoundError, recipe.RecipeError) as err:
        raise CLIError(str(err)) from err


def cmd_plan(args: argparse.Namespace) -> int:
    """Run ``profit-edu plan``."""
    from ..schedule import format_plan, plan_dict

    recipe = load_recipe(args.recipe)
    say(json.dumps(plan_dict(recipe), indent=1) if args.json else format_plan(recipe))
    return 0

