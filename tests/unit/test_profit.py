"""Tests of profit_edu.profit: recipes as data, their validation, the phase plan, freezing, reference quirks."""

from __future__ import annotations

import dataclasses
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from profit_edu import quantize_model
from profit_edu.checkpoint import load_checkpoint
from profit_edu.layers import QAct
from profit_edu.profit import (
    QUIRKS,
    RECIPE_DIR,
    Phase,
    RecipeError,
    check_recipe_for_model,
    expand_phases,
    format_plan,
    freeze_count,
    frozen_for_phase,
    list_recipes,
    load_init,
    load_recipe,
    make_tracker,
    parse_recipe,
    phase_config,
    plan_dict,
    prepare_model,
    random_freeze_order,
    recipe_path,
    run_recipe,
    set_phase_bits,
)
from profit_edu.quant import DuQ, LSQQuantizer, PACTQuantizer
from profit_edu.train import fit

MINIMAL = """\
version: 1
name: test
model:
  arch: mobilenet_v2
  num_classes: 10
  width_mult: 0.25
data:
  dataset: synthetic
  batch_size: 8
train:
  lr: 0.01
schedule:
  fp_epochs: 1
  warmup_epochs: 0
  act_bits: [8, 4]
  weight_bits: [8, 4]
  freeze_fractions: ["0", "1/3", "2/3"]
"""


def edited(**replacements: str) -> str:
    """MINIMAL with whole lines replaced: edited(lr="  lrr: 0.01") swaps the line that starts with '  lr:'."""
    lines = MINIMAL.splitlines()
    for key, new in replacements.items():
        idx = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
        lines[idx] = new
    return "\n".join(lines) + "\n"


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if fragment in line)


# --------------------------------------------------------------------------------------------
# Shipped recipes and the paper's plan
# --------------------------------------------------------------------------------------------
def test_every_shipped_recipe_loads_and_names_match_files():
    names = list_recipes()
    assert {"mobilenet_v2_w4a4_imagenet", "mobilenet_v3_large_w4a4_imagenet", "mobilenet_v1_w4a4_imagenet",
            "mobilenet_v2_w4a4_cifar10", "quick", "tiny"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.version == 1
        assert expand_phases(recipe)


def test_cifar_protocol_recipes_validate_and_plan():
    """The CPU-sized full-CIFAR protocol: five epochs at W4A4, six at W3A3 (weights 4 -> 3), from the shipped model."""
    for name, phases in (("cifar_w4a4", ["a4_ft", "w4_sampling", "w4_ft1", "w4_ft2", "w4_ft3"]),
                         ("cifar_w3a3", ["a3_ft", "w4_ft", "w3_sampling", "w3_ft1", "w3_ft2", "w3_ft3"])):
        recipe = load_recipe(name)
        assert [p.name for p in expand_phases(recipe)] == phases
        assert recipe.data.dataset == "cifar10" and recipe.data.train_images is None  # all of CIFAR-10
        assert recipe.train.lr == 0.002 and recipe.mode == "fixed" and recipe.teacher == "self"
        plan = format_plan(recipe)
        assert f"total: {len(phases)} phases, {len(phases)} epochs" in plan and "34 of 52 (2/3)" in plan
    assert load_recipe("quick").init == "cifar10-mobilenet_v2-w0.5-s2"


@pytest.mark.parametrize("name", ["cifar_w4a4", "cifar_w3a3"])
def test_the_lr_per_step_recipes_differ_from_the_cifar_protocol_in_that_alone(name):
    from dataclasses import replace

    base, per_step = load_recipe(name), load_recipe(f"{name}_lr_per_step")
    assert per_step.train.lr_per_step and not base.train.lr_per_step
    assert replace(per_step, name=base.name, description=base.description, source=base.source,
                   train=replace(per_step.train, lr_per_step=False)) == base


def test_load_init_refuses_another_model_before_training(tmp_path):
    from profit_edu.checkpoint import save_checkpoint
    from profit_edu.models import get_model

    recipe = load_recipe("tiny")
    m = recipe.model
    args = {"model": m.arch, "num_classes": m.num_classes, "width_mult": 0.5, "cifar_stem": m.cifar_stem,
            "stem_stride": 1, "weight_bits": None, "act_bits": None}
    net = get_model(m.arch, num_classes=m.num_classes, width_mult=0.5, cifar_stem=True)
    save_checkpoint(tmp_path / "wide", epoch=0, model=net, meta={"model_args": args})
    with pytest.raises(RecipeError, match=r"init .*wide is not a float run of the recipe's model \(width_mult: 0.5 "
                                          r"there, 0.25 in the recipe\)"):
        load_init(recipe, tmp_path / "wide")
    with pytest.raises(RecipeError, match="has no init"):
        load_init(recipe)
    with pytest.raises(RecipeError, match="no checkpoint"):
        load_init(recipe, tmp_path / "missing")
    save_checkpoint(tmp_path / "same", epoch=0, model=get_model(m.arch, num_classes=m.num_classes,
                                                                 width_mult=m.width_mult, cifar_stem=True),
                    meta={"model_args": {**args, "width_mult": m.width_mult}})
    loaded = load_init(recipe, tmp_path / "same")
    assert not any(isinstance(x, QAct) for x in loaded.modules())


def test_inferred_recipes_are_marked():
    assert load_recipe("mobilenet_v2_w4a4_imagenet").inferred is False
    assert load_recipe("mobilenet_v3_large_w4a4_imagenet").inferred is True
    assert load_recipe("mobilenet_v1_w4a4_imagenet").inferred is True


def test_paper_recipe_is_the_official_readme_command():
    r = load_recipe("mobilenet_v2_w4a4_imagenet")
    assert (r.train.lr, r.train.weight_decay, r.train.ema_decay, r.teacher) == (0.005, 4e-5, 0.9997, "resnet101")
    assert (r.schedule.act_bits, r.schedule.weight_bits, r.schedule.profit_bits) == ((8, 5, 4), (8, 5, 4), (4,))
    assert r.model.pretrained == "torchvision" and r.mode == "fixed" and r.quirks == ()
    phases = expand_phases(r)
    names = [p.name for p in phases]
    assert names == ["fp", "a8_bn", "a8_ft", "a8_bn2", "a5_bn", "a5_ft", "a5_bn2", "a4_bn", "a4_ft", "a4_bn2",
                     "w8_bn", "w8_ft", "w8_bn2", "w5_bn", "w5_ft", "w5_bn2", "w4_bn", "w4_sampling", "w4_ft1",
                     "w4_ft2", "w4_ft3", "w4_bn2"]
    epochs = {"fp": 15, "a": 75, "w8": 25, "w5": 25, "w4": 60}
    assert sum(p.epochs for p in phases if p.name == "fp") == epochs["fp"]
    assert sum(p.epochs for p in phases if p.name.startswith("a")) == epochs["a"]
    for w in ("w8", "w5", "w4"):
        assert sum(p.epochs for p in phases if p.name.startswith(w + "_")) == epochs[w]
    assert sum(p.epochs for p in phases) == 200
    # activations first with float weights, then weights with activations at 4 bits
    assert all(p.weight_bits is None for p in phases if p.name.startswith("a"))
    assert all(p.act_bits == 4 for p in phases if p.name.startswith("w"))
    sampling = phases[names.index("w4_sampling")]
    assert (sampling.epochs, sampling.lr_schedule, sampling.warmup_epochs) == (5, "constant", 0)
    assert [p.freeze_fraction for p in phases if p.name.startswith("w4_ft")] == [0, Fraction(1, 3), Fraction(2, 3)]


def test_plan_printer_for_the_paper_recipe():
    text = format_plan(load_recipe("mobilenet_v2_w4a4_imagenet"), num_layers=52)
    lines = text.splitlines()
    assert lines[-1] == "total: 22 phases, 200 epochs"
    assert "mode fixed" in lines[0]
    row = {line.split()[1]: line for line in lines if re.match(r"\s*\d+\s+\w", line)}
    assert len(row) == 22
    assert "17 of 52 (1/3)" in row["w4_ft2"] and "all but the top 17 AIWQ layers" in row["w4_ft2"]
    assert "34 of 52 (2/3)" in row["w4_ft3"]
    assert "0 of 52" in row["w4_ft1"]
    assert "0.005 constant" in row["w4_sampling"] and "AIWQ sampled" in row["w4_sampling"]
    assert "all weights" in row["a8_bn"] and "no conv/linear weights" in row["a8_bn"]
    assert "warm-up 3 + cosine" in row["fp"] and " 15 " in row["fp"] and "fp/fp" in row["fp"]
    assert "4/8" in row["w8_ft"] and "8/fp" in row["a8_ft"]


def test_plan_says_how_a_one_epoch_cosine_phase_is_scheduled():
    """Once per epoch a one-epoch phase keeps its full rate: the plan says so, and ``lr_per_step`` decays it."""
    from dataclasses import replace

    recipe = load_recipe("cifar_w4a4")
    assert "0.002 constant (cosine per epoch, 1 epoch)" in format_plan(recipe, num_layers=52)
    per_step = replace(recipe, train=replace(recipe.train, lr_per_step=True))
    text = format_plan(per_step, num_layers=52)
    assert "0.002, cosine per step" in text and "0.002 constant" in text  # the sampling phase stays constant
    phases = expand_phases(per_step)
    configs = {p.name: phase_config(per_step, p) for p in phases}
    assert configs["w4_ft1"].lr_per_step and not configs["w4_sampling"].lr_per_step
    assert not any(phase_config(recipe, p).lr_per_step for p in phases)


def test_plan_counts_the_models_layers():
    assert "L = 52 layers" in format_plan(load_recipe("tiny"))
    d = plan_dict(load_recipe("mobilenet_v2_w4a4_imagenet"), num_layers=52)
    assert d["total_epochs"] == 200 and d["num_layers"] == 52
    assert [p["frozen_layers"] for p in d["phases"] if p["name"].startswith("w4_ft")] == [0, 17, 34]
    json.dumps(d)  # JSON-friendly


def test_freeze_count_is_exact_floor():
    assert [freeze_count(52, Fraction(k, 3)) for k in range(4)] == [0, 17, 34, 52]
    assert freeze_count(51, Fraction(1, 3)) == 17 and freeze_count(46, Fraction(2, 3)) == 30


def test_to_dict_round_trips_through_yaml():
    r = load_recipe("mobilenet_v2_w4a4_imagenet")
    again = parse_recipe(yaml.safe_dump(r.to_dict()))
    assert again == r


def test_recipe_path_finds_files_and_shipped_names(tmp_path):
    assert recipe_path("tiny") == RECIPE_DIR / "tiny.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text(MINIMAL)
    assert load_recipe(own).name == "test"
    with pytest.raises(FileNotFoundError, match="shipped recipes"):
        load_recipe("no_such_recipe")


# --------------------------------------------------------------------------------------------
# Bad recipes: rejected with file and line
# --------------------------------------------------------------------------------------------
def test_minimal_recipe_parses_with_defaults():
    r = parse_recipe(MINIMAL, "t.yaml")
    assert r.schedule.bn_stabilize and r.aiwq.ema == 0.999 and r.mode == "fixed"
    assert r.where("schedule", "act_bits") == f"t.yaml:{line_of(MINIMAL, 'act_bits')}"


def test_unknown_key_is_rejected_with_its_line():
    text = edited(lr="  lrr: 0.01")
    with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, 'lrr')}: unknown key 'lrr' in train"):
        parse_recipe(text, "t.yaml")
    text = MINIMAL + "extra: 1\n"
    with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, 'extra')}: unknown key 'extra' in the recipe"):
        parse_recipe(text, "t.yaml")


def test_lr_per_step_is_a_boolean_of_train():
    assert parse_recipe(edited(lr="  lr: 0.01\n  lr_per_step: true"), "t.yaml").train.lr_per_step
    text = edited(lr="  lr: 0.01\n  lr_per_step: 1")
    with pytest.raises(RecipeError, match=r"lr_per_step must be true or false"):
        parse_recipe(text, "t.yaml")


def test_duplicate_keys_and_missing_sections_are_rejected():
    with pytest.raises(RecipeError, match=r"t.yaml:\d+: key 'lr' appears twice"):
        parse_recipe(MINIMAL.replace("  lr: 0.01\n", "  lr: 0.01\n  lr: 0.02\n"), "t.yaml")
    with pytest.raises(RecipeError, match="lacks the required key 'schedule'"):
        parse_recipe(MINIMAL.split("schedule:")[0], "t.yaml")
    with pytest.raises(RecipeError, match="version"):
        parse_recipe(MINIMAL.replace("version: 1", "version: 2"), "t.yaml")


@pytest.mark.parametrize("line, match", [
    ("  act_bits: [4, 8]", r"act_bits must go strictly down.*8 after 4"),
    ("  act_bits: [8, 8]", r"act_bits must go strictly down"),
    ("  act_bits: [8, 1]", r"act_bits\[1\] must be an int bit width in 2..8, got 1"),
    ("  act_bits: [9, 4]", r"act_bits\[0\] must be an int bit width in 2..8, got 9"),
    ("  act_bits: []", r"act_bits must be a non-empty list"),
    ("  act_bits: [8, 4.5]", r"act_bits\[1\] must be an int bit width"),
])
def test_impossible_bit_orders_are_rejected_with_their_line(line, match):
    text = edited(act_bits=line)
    with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, 'act_bits')}: schedule\.{match}"):
        parse_recipe(text, "t.yaml")


def test_bits_inside_a_block_list_point_at_the_item():
    text = MINIMAL.replace("  weight_bits: [8, 4]", "  weight_bits:\n    - 8\n    - 10")
    with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, '- 10')}: schedule.weight_bits\[1\]"):
        parse_recipe(text, "t.yaml")


def test_profit_bits_must_be_weight_bits():
    text = MINIMAL + "  profit_bits: [3]\n"
    with pytest.raises(RecipeError, match=r"profit_bits\[0\] must be one of weight_bits \[8, 4\], got 3"):
        parse_recipe(text, "t.yaml")


@pytest.mark.parametrize("value, match", [
    ('["0", "1/3", "4/3"]', r"freeze_fractions\[2\] must lie in \[0, 1\], got '4/3'"),
    ("[0, -0.1]", r"freeze_fractions\[1\] must lie in \[0, 1\]"),
    ("[0.5, 0.25]", r"must not go down"),
    ('["a third"]', r"freeze_fractions\[0\] must be a number or a fraction"),
])
def test_fractions_outside_0_1_are_rejected_with_their_line(value, match):
    text = edited(freeze_fractions=f"  freeze_fractions: {value}")
    with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, 'freeze_fractions')}: .*{match}"):
        parse_recipe(text, "t.yaml")


def test_fractions_accept_exact_strings_and_numbers():
    r = parse_recipe(edited(freeze_fractions='  freeze_fractions: [0, "1/3", 0.5, 1]'))
    assert r.schedule.freeze_fractions == (0, Fraction(1, 3), Fraction(1, 2), 1)


def test_other_bad_values_point_at_their_line():
    for key, line, match in [("lr", "  lr: -1", "train.lr must be a number > 0"),
                             ("arch", "  arch: resnet", "model.arch must be one of"),
                             ("dataset", "  dataset: mnist", "data.dataset must be one of"),
                             ("fp_epochs", "  fp_epochs: -1", "schedule.fp_epochs must be an int >= 0")]:
        text = edited(**{key: line})
        with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, line.strip())}: {match}"):
            parse_recipe(text, "t.yaml")


def test_quirks_need_reference_mode_and_known_names():
    text = MINIMAL + "mode: reference\nquirks: [init_bug, relu6_bug]\n"
    with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, 'quirks')}: quirks\[1\] must be a known quirk"):
        parse_recipe(text, "t.yaml")
    with pytest.raises(RecipeError, match="need mode: reference"):
        parse_recipe(MINIMAL + "quirks: [init_bug]\n", "t.yaml")
    every = parse_recipe(MINIMAL + "mode: reference\n")
    assert set(every.quirks) == set(QUIRKS)
    some = parse_recipe(MINIMAL + "mode: reference\nquirks: [init_bug]\n")
    assert some.has("init_bug") and not some.has("relu_in_fp")
    with pytest.raises(KeyError, match="unknown quirk"):
        some.has("nope")


def test_unknown_frozen_layer_names_are_rejected_before_training(tmp_path):
    text = MINIMAL + "  always_frozen: [features.0.0, features.99.conv]\n"
    recipe = parse_recipe(text, "t.yaml")
    model = _tiny_mobilenet(recipe)
    with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, 'always_frozen')}: 'features.99.conv' is not"):
        check_recipe_for_model(recipe, model)
    with pytest.raises(RecipeError, match=r"features\.99\.conv"):
        run_recipe(recipe, model, [], None, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing started
    not_a_conv = parse_recipe(MINIMAL + "  always_frozen: [features.0.1]\n")  # a BatchNorm
    with pytest.raises(RecipeError, match="not a conv or linear layer"):
        check_recipe_for_model(not_a_conv, model)


def _tiny_mobilenet(recipe):
    from profit_edu.profit import build_model

    torch.manual_seed(0)
    return build_model(recipe)


# --------------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------------
class Batches:
    """A fixed list of (x, y) batches with set_epoch, like data.DeviceLoader."""

    def __init__(self, n: int = 3, size: int = 8) -> None:
        gen = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(8, 3, size, size, generator=gen), torch.randint(0, 4, (8,), generator=gen))
                        for _ in range(n)]

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def small_net() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    return prepare_model(parse_recipe(MINIMAL), net)


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _train_phase(net: nn.Module, phase: Phase, ranking) -> tuple[dict, dict, tuple[str, ...]]:
    recipe = parse_recipe(MINIMAL)
    set_phase_bits(net, recipe, phase)
    net(Batches().batches[0][0])  # initialise the quantizers before the snapshot
    frozen = frozen_for_phase(recipe, phase, net, ranking)
    config = phase_config(recipe, dataclasses.replace(phase, epochs=1, warmup_epochs=0), frozen=frozen)
    config = dataclasses.replace(config, lr=0.5, ema_decay=None)
    before = _snapshot(net)
    fit(net, Batches(), None, config)
    return before, _snapshot(net), frozen


def test_freezing_leaves_exactly_the_chosen_weights_unchanged_while_bn_a_c_train():
    net = small_net()
    ranking = [("3", 0.9), ("6", 0.5), ("0", 0.1)]  # AIWQ, most unstable first
    phase = Phase("w4_ft2", "ft", 1, 0, 4, 4, freeze_fraction=Fraction(1, 3))
    before, after, frozen = _train_phase(net, phase, ranking)
    assert frozen == ("3",)  # floor(3 / 3) = 1 layer: the top of the ranking
    assert torch.equal(before["3.weight"], after["3.weight"])
    for name in ("0.weight", "6.weight", "11.weight"):
        assert not torch.equal(before[name], after[name]), name
    for name in ("4.weight", "4.bias", "3.weight_quant.a_hat", "5.quantizer.a_hat"):
        assert not torch.equal(before[name], after[name]), name  # BN after "3", its a, the next act's a
    # the next act's c trains too, but its gradient here (~4e-6, times lr 0.5 x 0.01) is below float32's resolution
    assert net[5].quantizer.c_hat.grad is not None and net[5].quantizer.c_hat.grad.abs().item() > 0
    # a conv's weight scale c is invisible to the BN that follows (zero gradient), so check it still has an lr
    assert _lr_of(net, frozen, "3.weight_quant.c_hat") > 0 and _lr_of(net, frozen, "3.weight") == 0


def _lr_of(net: nn.Module, frozen: tuple[str, ...], name: str) -> float:
    from profit_edu.train import param_groups

    config = phase_config(parse_recipe(MINIMAL), Phase("x", "ft", 1, 0, 4, 4), frozen=frozen)
    return next(g["lr"] for g in param_groups(net, config) if name in g["param_names"])


def test_more_frozen_in_ft3():
    net = small_net()
    ranking = [("3", 0.9), ("6", 0.5), ("0", 0.1)]
    phase = Phase("w4_ft3", "ft", 1, 0, 4, 4, freeze_fraction=Fraction(2, 3))
    before, after, frozen = _train_phase(net, phase, ranking)
    assert frozen == ("3", "6")
    assert torch.equal(before["6.weight"], after["6.weight"]) and not torch.equal(before["0.weight"], after["0.weight"])


def test_bn_stabilisation_trains_everything_but_conv_and_linear_weights():
    net = small_net()
    before, after, frozen = _train_phase(net, Phase("w4_bn", "bn", 1, 0, 4, 4), None)
    assert set(frozen) == {"0", "3", "6", "11"}
    for name in before:
        changed = not torch.equal(before[name], after[name])
        is_weight = name in {"0.weight", "3.weight", "6.weight", "11.weight"}
        if name.endswith("c_hat") and name not in ("8.quantizer.c_hat", "11.weight_quant.c_hat"):
            assert _lr_of(net, frozen, name) > 0  # a scale that a later BN undoes: trains, but has no gradient
            continue
        assert changed != is_weight, name  # weights fixed; BN gamma/beta, biases, a and c all moved


def test_profit_fine_tune_without_ranking_is_an_error():
    with pytest.raises(ValueError, match="no ranking"):
        frozen_for_phase(parse_recipe(MINIMAL), Phase("w4_ft2", "ft", 1, 0, 4, 4, freeze_fraction=Fraction(1, 3)),
                         small_net(), None)


# --------------------------------------------------------------------------------------------
# Reference-mode quirks: each changes what it claims, and nothing when off
# --------------------------------------------------------------------------------------------
def _with_quirks(*quirks: str):
    return parse_recipe(MINIMAL + "mode: reference\nquirks: [" + ", ".join(quirks) + "]\n")


def test_quirk_init_bug_uses_the_official_initialisation():
    def init_a(recipe):
        net = prepare_model(recipe, nn.Sequential(nn.Conv2d(3, 4, 1), nn.Hardswish()))
        set_bits_phase = Phase("a4_ft", "ft", 1, 0, 4, None)
        set_phase_bits(net, recipe, set_bits_phase)
        net(torch.randn(64, 3, 4, 4) - 1.0)
        act = net[1]
        assert isinstance(act, QAct)
        return act.quantizer.init_style, act.quantizer.a.item()

    fixed_style, fixed_a = init_a(parse_recipe(MINIMAL))
    torch.manual_seed(0)
    ref_style, ref_a = init_a(_with_quirks("init_bug"))
    assert (fixed_style, ref_style) == ("fixed", "reference")
    assert fixed_a != pytest.approx(ref_a)  # pre-activation positives vs h-swish(x) + 3/8


def test_quirk_teacher_train_mode():
    phase = Phase("a4_ft", "ft", 1, 0, 4, None)
    assert phase_config(parse_recipe(MINIMAL), phase).teacher_train_mode is False
    assert phase_config(_with_quirks("teacher_train_mode"), phase).teacher_train_mode is True


def test_quirk_relu_in_fp_replaces_relu6_while_activations_are_float():
    recipe = _with_quirks("relu_in_fp")
    net = prepare_model(recipe, nn.Sequential(nn.ReLU6()))
    x = torch.tensor([[-1.0, 3.0, 10.0]])
    set_phase_bits(net, recipe, Phase("fp", "fp", 1, 0, None, None))
    assert net(x).tolist() == [[0.0, 3.0, 10.0]]  # plain ReLU
    set_phase_bits(net, recipe, Phase("a8_ft", "ft", 1, 0, 8, None))
    assert isinstance(net[0].act, nn.ReLU6)
    fixed = prepare_model(parse_recipe(MINIMAL), nn.Sequential(nn.ReLU6()))
    set_phase_bits(fixed, parse_recipe(MINIMAL), Phase("fp", "fp", 1, 0, None, None))
    assert fixed(x).tolist() == [[0.0, 3.0, 6.0]]


def test_quirk_aiwq_zero_pad_and_aiwq_settings():
    net = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), 4, 4)
    assert make_tracker(parse_recipe(MINIMAL), net).aiwq_zero_pad is False
    tracker = make_tracker(_with_quirks("aiwq_zero_pad"), net)
    assert tracker.aiwq_zero_pad is True and tracker.ema == 0.999 and tracker.skip_above == 1.0


def test_reference_recipe_file_lists_every_quirk():
    r = load_recipe("mobilenet_v2_w4a4_imagenet_reference")
    assert r.mode == "reference" and set(r.quirks) == set(QUIRKS)
    assert sum(p.epochs for p in expand_phases(r)) == 200


def test_recipes_directory_is_package_data():
    """Every shipped recipe lies inside the package and matches pyproject's package-data, so a wheel ships it."""
    import fnmatch
    import importlib.resources

    import tomllib

    import profit_edu

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["profit_edu"]
    assert Path(RECIPE_DIR).resolve().parent == Path(profit_edu.__file__).resolve().parent
    assert {"tiny", "quick", "mobilenet_v2_w4a4_imagenet"} <= set(list_recipes())
    for name in list_recipes():
        assert any(fnmatch.fnmatch(f"recipes/{name}.yaml", p) for p in patterns), f"{name}.yaml is not package data"
        text = importlib.resources.files("profit_edu").joinpath("recipes", f"{name}.yaml").read_text()
        assert parse_recipe(text).to_dict() == load_recipe(name).to_dict()


# --------------------------------------------------------------------------------------------
# Ablations: the freezing policy (schedule.freeze) and the quantizer (method)
# --------------------------------------------------------------------------------------------
def test_freeze_policy_and_method_parse_with_defaults_and_reject_unknown_values():
    r = parse_recipe(MINIMAL)
    assert (r.schedule.freeze, r.method) == ("aiwq", "duq")
    r = parse_recipe(MINIMAL + "  freeze: random\nmethod: lsq\n")
    assert (r.schedule.freeze, r.method) == ("random", "lsq")
    assert parse_recipe(yaml.safe_dump(r.to_dict())) == r  # the new fields round-trip
    text = MINIMAL + "  freeze: sometimes\n"
    with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, 'freeze: ')}: schedule.freeze must be one of "
                                          r"\('aiwq', 'random', 'none'\), got 'sometimes'"):
        parse_recipe(text, "t.yaml")
    text = MINIMAL + "method: apot\n"
    with pytest.raises(RecipeError, match=rf"^t.yaml:{line_of(text, 'method')}: method must be one of "
                                          r"\('duq', 'pact', 'lsq'\), got 'apot'"):
        parse_recipe(text, "t.yaml")
    with pytest.raises(RecipeError, match="mode: reference replays the official DuQ code"):
        parse_recipe(MINIMAL + "mode: reference\nmethod: pact\n", "t.yaml")


def test_prepare_model_uses_the_recipes_quantizer():
    for method, cls in (("duq", DuQ), ("pact", PACTQuantizer), ("lsq", LSQQuantizer)):
        recipe = parse_recipe(MINIMAL + f"method: {method}\n")
        net = prepare_model(recipe, nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6()))
        assert isinstance(net[0].weight_quant, cls) and isinstance(net[1].quantizer, cls), method


def test_freeze_none_freezes_nothing_and_needs_no_ranking():
    recipe = parse_recipe(MINIMAL + "  freeze: none\n")
    net = small_net()
    for frac in (Fraction(0), Fraction(1, 3), Fraction(2, 3)):
        assert frozen_for_phase(recipe, Phase("w4_ft", "ft", 1, 0, 4, 4, freeze_fraction=frac), net, None) == ()
    assert set(frozen_for_phase(recipe, Phase("w4_bn", "bn", 1, 0, 4, 4), net, None)) == {"0", "3", "6", "11"}
    # the same phases and epochs as PROFIT, only nothing frozen
    assert [p.name for p in expand_phases(recipe)] == [p.name for p in expand_phases(parse_recipe(MINIMAL))]
    d = plan_dict(recipe, num_layers=52)
    assert [p["frozen_layers"] for p in d["phases"] if p["name"].startswith("w4_ft")] == [0, 0, 0]
    rows = format_plan(recipe, num_layers=52)
    assert "freezing: none, with the same phases and epochs" in rows
    assert "0 of 52 (2/3, freeze none)" in rows and "AIWQ sampled" not in rows


def test_freeze_random_freezes_as_many_seeded_nested_layers():
    base = parse_recipe(MINIMAL + "  freeze: random\n")
    net = prepare_model(base, _tiny_mobilenet(base))
    ft2 = Phase("w4_ft2", "ft", 1, 0, 4, 4, freeze_fraction=Fraction(1, 3))
    ft3 = Phase("w4_ft3", "ft", 1, 0, 4, 4, freeze_fraction=Fraction(2, 3))
    two, three = frozen_for_phase(base, ft2, net, None), frozen_for_phase(base, ft3, net, None)
    assert (len(two), len(three)) == (17, 34)  # floor(52/3), floor(104/3): as many as PROFIT freezes
    assert three[:17] == two  # nested, like the AIWQ ranking
    order = random_freeze_order(net, seed=0)
    assert sorted(order) == sorted(n for n, m in net.named_modules() if type(m).__name__ == "QConv2d")
    assert list(three) == order[:34]
    assert frozen_for_phase(base, ft2, net, None) == two  # reproducible
    other = dataclasses.replace(base, seed=1)
    assert frozen_for_phase(other, ft2, net, None) != two  # the recipe's seed draws the layers
    rows = format_plan(base, num_layers=52)
    assert "all but 17 random layers' weights" in rows and "17 of 52 (1/3, freeze random)" in rows


def _float_small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


SHORT = MINIMAL.replace("  fp_epochs: 1", "  fp_epochs: 0").replace("[8, 4]", "[4]") + (
    "  bn_stabilize: false\n  sampling_epochs: 1\n")


@pytest.fixture(scope="module")
def policy_runs(tmp_path_factory) -> tuple[Path, dict]:
    """The same short recipe run with each freezing policy, from the same float net (one run each)."""
    out = tmp_path_factory.mktemp("policies")
    runs = {}
    for name in ("aiwq", "none", "random"):
        runs[name] = run_recipe(parse_recipe(SHORT + f"  freeze: {name}\n"), _float_small_net(), Batches(), None,
                                out_dir=out / name)
    return out, runs


@pytest.mark.parametrize("policy", ["none", "random"])
def test_run_recipe_with_another_policy_trains_the_same_until_freezing_starts(policy_runs, policy):
    """The AIWQ tracker only measures: without it (freeze none/random) sampling and ft1 end bit-identical."""
    out, runs = policy_runs
    profit, other = runs["aiwq"], runs[policy]
    assert [p.phase.name for p in other.phases] == ["a4_ft", "w4_sampling", "w4_ft1", "w4_ft2", "w4_ft3"]
    assert other.ranking is None and not (out / policy / "aiwq_ranking.json").exists()
    assert profit.ranking is not None
    for i in range(3):  # a4_ft, w4_sampling, w4_ft1: nothing frozen in either run
        same = [{k: v for k, v in r.items() if k != "wall_s"} for r in profit.phases[i].history]
        assert same == [{k: v for k, v in r.items() if k != "wall_s"} for r in other.phases[i].history]
    after_ft1 = [load_checkpoint(out / name / "02_w4_ft1").model_state for name in ("aiwq", policy)]
    assert after_ft1[0].keys() == after_ft1[1].keys()
    assert all(torch.equal(after_ft1[0][k], after_ft1[1][k]) for k in after_ft1[0])
    frozen = {p.phase.name: p.frozen for p in other.phases}
    if policy == "none":
        assert frozen["w4_ft2"] == frozen["w4_ft3"] == ()
    else:
        order = json.loads((out / policy / "random_order.json").read_text())["order"]
        assert frozen["w4_ft2"] == tuple(order[:1]) and frozen["w4_ft3"] == tuple(order[:2])


def test_profit_gathers_the_names_of_freezing_recipe_schedule_builders_and_pipeline():
    from profit_edu import builders, freezing, pipeline, profit, recipe, schedule

    homes = (freezing, recipe, schedule, builders, pipeline)
    extra = ["ARCHS", "DATASETS", "MAX_RECIPE_BYTES", "MAX_RECIPE_VALUES", "PHASE_KINDS", "SECTIONS", "RecipeSource"]
    for name in [*profit.__all__, *extra]:
        assert any(getattr(m, name, None) is getattr(profit, name) for m in homes), name


def test_phase_calibration_moves_loader_batches_to_the_training_device(monkeypatch):
    # a plain DataLoader yields CPU tensors; on a GPU the model is on CUDA (the meta device stands in for it here)
    from profit_edu import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "calibrate", lambda model, batches, **kw: seen.extend(batches))
    loader = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    pipeline._calibrate_for_phase(nn.Identity(), None, loader, parse_recipe(MINIMAL), epoch=0, device="meta")
    assert seen and all(x.device.type == "meta" for x in seen)
