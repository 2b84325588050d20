"""Issue 13: reading a recipe's YAML (profit.parse_recipe / load_recipe) never runs code, never exhausts memory, and
reports every problem in one line with the file and line."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from profit_edu import recipe
from profit_edu.profit import RecipeError, load_recipe, parse_recipe

from .test_profit import MINIMAL


def alias_bomb(levels: int = 9) -> str:
    """About 480 bytes: ``levels`` levels of 9 aliases of the level below, 9**levels strings once expanded."""
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(rows) + "\n"


def test_nested_aliases_are_refused_before_they_expand():
    text = alias_bomb()
    assert len(text) < 520
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(RecipeError, match=r"^bomb\.yaml:5: the recipe expands to more than 10,000 values"):
            parse_recipe(text, "bomb.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak  # it took 3.2 GB before
    assert time.perf_counter() - start < 5


def test_a_few_aliases_are_fine():
    text = MINIMAL.replace("  act_bits: [8, 4]", "  act_bits: &bits [8, 4]").replace("  weight_bits: [8, 4]",
                                                                                    "  weight_bits: *bits")
    recipe = parse_recipe(text, "t.yaml")
    assert recipe.schedule.act_bits == recipe.schedule.weight_bits == (8, 4)


def test_a_recursive_alias_is_refused():
    with pytest.raises(RecipeError, match=r"^r\.yaml:1: a YAML alias refers to the value that contains it"):
        parse_recipe("a: &a [1, *a]\n", "r.yaml")


@pytest.mark.parametrize(("tag", "match"), [
    ("!!python/object/apply:os.system ['echo ran']", r"the tag !!python/object/apply:os\.system would build a Python "
                                                     r"object; a recipe holds plain values only"),
    ("!!python/name:os.system", r"the tag !!python/name:os\.system would build"),
    ("!custom x", r"tag '!custom' is not allowed in a recipe"),
    ("!!binary aGVsbG8=", r"tag 'tag:yaml\.org,2002:binary' is not allowed"),
])
def test_tags_that_build_objects_are_refused_with_the_line(tag, match, capfd):
    text = MINIMAL.replace("name: test", f"name: {tag}")
    with pytest.raises(RecipeError, match=r"^t\.yaml:2: " + match):
        parse_recipe(text, "t.yaml")
    assert "ran" not in capfd.readouterr().out  # nothing was executed


@pytest.mark.parametrize(("text", "match"), [
    ("version: 1\nname: [x, y\n", r"^t\.yaml:3:1: not valid YAML: expected ',' or '\]', but got '<stream end>' "
                                  r"\(while parsing a flow sequence\)$"),
    ("a: b: c\n", r"^t\.yaml:1:5: not valid YAML: mapping values are not allowed here$"),
    ("[" * 3000 + "]" * 3000, r"^t\.yaml: not valid YAML for a recipe: nested too deeply$"),
])
def test_yaml_errors_are_one_line(text, match):
    with pytest.raises(RecipeError, match=match) as info:
        parse_recipe(text, "t.yaml")
    assert "\n" not in str(info.value)


def test_a_recipe_that_is_not_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(MINIMAL.replace("name: test", "name: caf\u00e9").encode("latin-1"))
    with pytest.raises(RecipeError, match=rf"^{path}:2: not UTF-8 text \(byte 0xe9 at offset 20\); save the recipe "
                                          "as UTF-8$"):
        load_recipe(path)


def test_a_giant_file_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL)
    monkeypatch.setattr(recipe, "MAX_RECIPE_BYTES", 100)  # the loader lives in profit_edu.recipe
    with pytest.raises(RecipeError, match=rf"^{path}: {len(MINIMAL):,} bytes is not a recipe"):
        load_recipe(path)
