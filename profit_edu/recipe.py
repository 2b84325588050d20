"""A PROFIT recipe: the whole training schedule as data, in a YAML file loaded into frozen dataclasses.

A recipe (``profit_edu/recipes/*.yaml``, ``version: 1``) maps one to one onto :class:`Recipe`, which holds
:class:`ModelSpec`, :class:`DataSpec`, :class:`OptimSpec`, :class:`ScheduleSpec` and :class:`AIWQSpec` (and, for
the ImageNet recipes, :class:`ReproduceSpec`).
:func:`profit_edu.schedule.expand_phases` turns it into phases; :func:`profit_edu.pipeline.run_recipe` trains
them. Unknown keys, impossible bit orders, fractions outside [0, 1] and values out of range are rejected
before any training, with the file and line (:class:`RecipeError`).

*Modes.* ``mode: fixed`` (default) trains PROFIT as the paper describes it. ``mode: reference`` replays
quirks of the official code, each named in the recipe's ``quirks:`` list (all of them when the list is
omitted); see :data:`QUIRKS`. ``method:`` is the quantizer: ``duq`` (PROFIT's, default), ``pact`` or ``lsq``
(see :func:`~profit_edu.layers.quantize_model`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ._validate import is_bits as _is_bits
from ._validate import is_int as _is_int
from ._validate import is_real as _is_real
from .models import get_model, list_models
from .quant import METHODS

__all__ = ["DATASETS", "FREEZE_POLICIES", "QUIRKS", "RECIPE_DIR", "RECIPE_MODES", "RECIPE_VERSION", "AIWQSpec",
           "DataSpec", "ModelSpec", "OptimSpec", "Recipe", "RecipeError", "ReproduceSpec", "ScheduleSpec",
           "list_recipes", "load_recipe", "parse_recipe", "recipe_path"]

RECIPE_VERSION = 1
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
RECIPE_MODES = ("fixed", "reference")
#: How the fine-tunes at a PROFIT bit width choose the layers they freeze (``schedule.freeze``).
FREEZE_POLICIES = ("aiwq", "random", "none")
#: The official code's behaviours that ``mode: reference`` can replay, by name (notes B.4, D, G).
QUIRKS: dict[str, str] = {
    "init_bug": "activation quantizers initialise as the official code does: from the positive part of the "
                "pre-activation, no |x| for signed and no +3/8 for h-swish quantizers (init_style='reference')",
    "teacher_train_mode": "the teacher runs in train mode: its BN uses batch statistics and its running "
                          "statistics drift",
    "relu_in_fp": "while activations are float, ReLU6 layers compute plain ReLU (the official Q_ReLU6 with "
                  "n_lv = 0); the model's functional relu6 before pooling is not replayed",
    "aiwq_zero_pad": "AIWQ recomputes last step's output with zero padding, also for convs that pad with -3/8",
}
ARCHS = tuple(list_models())
DATASETS = ("imagenet", "cifar10", "auto", "synthetic")


class RecipeError(ValueError):
    """A recipe that cannot run; the message starts with ``file:line:`` where the problem is."""


class _FieldError(ValueError):
    """Raised by a spec's checks; the loader turns it into a :class:`RecipeError` at the field's line."""

    def __init__(self, name: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.name, self.index = name, index


# --------------------------------------------------------------------------------------------
# Field checks (each raises _FieldError naming the field)
# --------------------------------------------------------------------------------------------
def _need(ok: bool, name: str, allowed: str, value: object, index: int | None = None) -> None:
    if not ok:
        raise _FieldError(name, f"{name} must be {allowed}, got {value!r}", index)


def _check_bits_list(name: str, values: object) -> tuple[int, ...]:
    _need(isinstance(values, (list, tuple)) and len(values) > 0, name, "a non-empty list of bit widths", values)
    for i, b in enumerate(values):
        _need(_is_bits(b), f"{name}[{i}]", "an int bit width in 2..8", b, i)
    for i in range(1, len(values)):
        if values[i] >= values[i - 1]:
            raise _FieldError(name, f"{name} must go strictly down (PROFIT lowers bits step by step, e.g. 8 5 4); "
                                    f"got {list(values)}: {values[i]} after {values[i - 1]}", i)
    return tuple(values)


def _fraction(name: str, value: object, index: int) -> Fraction:
    try:
        if isinstance(value, bool):
            raise ValueError
        frac = Fraction(value) if isinstance(value, (int, str)) else Fraction(value).limit_denominator(1000)
    except (ValueError, TypeError, ZeroDivisionError):
        raise _FieldError(name, f"{name}[{index}] must be a number or a fraction like \"1/3\", got {value!r}",
                          index) from None
    if not 0 <= frac <= 1:
        raise _FieldError(name, f"{name}[{index}] must lie in [0, 1], got {value!r}", index)
    return frac


# --------------------------------------------------------------------------------------------
# The recipe as frozen dataclasses
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Which network to build (arguments of the :mod:`profit_edu.models` builders).

    ``pretrained: torchvision`` loads torchvision's ImageNet weights (v2 and v3 only; downloads them).
    """

    arch: str = "mobilenet_v2"
    num_classes: int = 1000
    width_mult: float = 1.0
    cifar_stem: bool = False
    stem_stride: int | None = None
    negative_padding: bool = False
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _need(self.arch in ARCHS, "arch", f"one of {ARCHS}", self.arch)
        _need(_is_int(self.num_classes) and self.num_classes >= 1, "num_classes", "an int >= 1", self.num_classes)
        _need(_is_real(self.width_mult) and self.width_mult > 0, "width_mult", "a number > 0", self.width_mult)
        _need(isinstance(self.cifar_stem, bool), "cifar_stem", "true or false", self.cifar_stem)
        _need(self.stem_stride in (None, 1, 2), "stem_stride", "1, 2 or null", self.stem_stride)
        _need(isinstance(self.negative_padding, bool), "negative_padding", "true or false", self.negative_padding)
        if self.negative_padding and not self.arch.startswith("mobilenet_v3"):
            raise _FieldError("negative_padding", "negative_padding applies to MobileNet-v3 only (h-swish)")
        _need(self.pretrained in (None, "torchvision"), "pretrained", "null or 'torchvision'", self.pretrained)
        if self.pretrained == "torchvision" and self.arch == "mobilenet_v1":
            raise _FieldError("pretrained", "torchvision has no MobileNet-v1 weights; use pretrained: null")

    def build(self) -> nn.Module:
        """The float network these fields describe, untrained (:func:`profit_edu.models.get_model`)."""
        kwargs: dict[str, Any] = {"width_mult": self.width_mult, "cifar_stem": self.cifar_stem,
                                  "stem_stride": self.stem_stride}
        if self.negative_padding:
            kwargs["negative_padding"] = True
        return get_model(self.arch, num_classes=self.num_classes, **kwargs)


@dataclass(frozen=True)
class DataSpec:
    """The training data. ``auto``: CIFAR-10 when a copy is found, else the synthetic task (with a banner).

    ``calibration_images``: in ``mode: fixed``, how many training images :func:`~profit_edu.layers.calibrate`
    sees whenever a phase changes the bit widths (the first batches of that phase's first epoch).
    """

    dataset: str = "cifar10"
    batch_size: int = 128
    train_images: int | None = None
    val_images: int | None = None
    image_size: int = 32
    root: str | None = None
    workers: int = 8
    calibration_images: int = 1024

    def __post_init__(self) -> None:
        _need(self.dataset in DATASETS, "dataset", f"one of {DATASETS}", self.dataset)
        _need(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an int >= 1", self.batch_size)
        for name in ("train_images", "val_images"):
            v = getattr(self, name)
            _need(v is None or (_is_int(v) and v >= 1), name, "an int >= 1 or null (the whole split)", v)
        _need(_is_int(self.image_size) and self.image_size >= 8, "image_size", "an int >= 8", self.image_size)
        _need(self.root is None or isinstance(self.root, str), "root", "a folder name or null", self.root)
        _need(_is_int(self.workers) and self.workers >= 0, "workers", "an int >= 0", self.workers)
        _need(_is_int(self.calibration_images) and self.calibration_images >= 1, "calibration_images",
              "an int >= 1", self.calibration_images)
        if self.dataset == "imagenet" and self.root is None:
            raise _FieldError("root", "dataset imagenet needs root: the folder holding train/ and val/")


@dataclass(frozen=True)
class OptimSpec:
    """The optimizer and the losses, the same in every phase (fields of :class:`~profit_edu.train.TrainConfig`).

    ``fp_lr`` is the float phase's learning rate when it differs (training from scratch on CIFAR needs a larger
    one than fine-tuning); null means ``lr``, as in the official script. ``lr_per_step: true`` sets a cosine
    phase's learning rate before every step instead of once per epoch (the official way), so that a phase of one
    epoch decays too (see :class:`~profit_edu.train.TrainConfig`).
    """

    lr: float = 0.005
    fp_lr: float | None = None
    weight_decay: float = 4e-5
    momentum: float = 0.9
    nesterov: bool = True
    quant_lr_mult: float = 0.01
    ema_decay: float | None = 0.9997
    kd_weight: float = 1.0
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    lr_per_step: bool = False

    def __post_init__(self) -> None:
        _need(_is_real(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
        _need(isinstance(self.lr_per_step, bool), "lr_per_step", "true or false", self.lr_per_step)
        _need(self.fp_lr is None or (_is_real(self.fp_lr) and self.fp_lr > 0), "fp_lr", "a number > 0 or null",
              self.fp_lr)
        _need(_is_real(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0",
              self.weight_decay)
        _need(_is_real(self.momentum) and 0 <= self.momentum < 1, "momentum", "a number in [0, 1)", self.momentum)
        _need(isinstance(self.nesterov, bool), "nesterov", "true or false", self.nesterov)
        _need(_is_real(self.quant_lr_mult) and self.quant_lr_mult >= 0, "quant_lr_mult", "a number >= 0",
              self.quant_lr_mult)
        _need(self.ema_decay is None or (_is_real(self.ema_decay) and 0 <= self.ema_decay < 1), "ema_decay",
              "a number in [0, 1) or null (no EMA)", self.ema_decay)
        _need(_is_real(self.kd_weight) and self.kd_weight >= 0, "kd_weight", "a number >= 0", self.kd_weight)
        _need(self.grad_clip is None or (_is_real(self.grad_clip) and self.grad_clip > 0), "grad_clip",
              "a number > 0 or null", self.grad_clip)
        _need(_is_real(self.label_smoothing) and 0 <= self.label_smoothing < 1, "label_smoothing",
              "a number in [0, 1)", self.label_smoothing)


@dataclass(frozen=True)
class ScheduleSpec:
    """The phase schedule (notes E). Defaults are the official README command's.

    Args:
        fp_epochs: float fine-tuning (with the teacher) before any quantization; 0 skips it.
        warmup_epochs: linear warm-up epochs of the float and fine-tune phases (BN phases: none).
        act_bits: activation bit widths, lowered in this order with float weights.
        weight_bits: weight bit widths, lowered in this order with activations at ``act_bits[-1]``.
        profit_bits: the weight bit widths at which PROFIT (sampling + freezing) runs; others get one fine-tune.
        bn_stabilize: a BN-stabilisation phase before and after each fine-tune.
        bn_epochs, ft_epochs, sampling_epochs: epochs of those phases.
        freeze_fractions: one fine-tune per entry at a PROFIT bit width, freezing ``floor(L * f)`` of the L
            ranked layers ("1/3" is exact; 0.333 would freeze 17.3 -> 17 of 52 too, but not of every L).
        always_frozen: exact module names whose weights stay frozen in every phase (ablations).
        freeze: which layers the fine-tunes freeze: ``aiwq`` (PROFIT: the top of the AIWQ ranking), ``random``
            (as many layers, in a random order seeded by the recipe's ``seed``), ``none`` (nothing; the same
            phases and epochs).
    """

    fp_epochs: int = 15
    warmup_epochs: int = 3
    act_bits: tuple[int, ...] = (8, 5, 4)
    weight_bits: tuple[int, ...] = (8, 5, 4)
    profit_bits: tuple[int, ...] = (4,)
    bn_stabilize: bool = True
    bn_epochs: int = 5
    ft_epochs: int = 15
    sampling_epochs: int = 5
    freeze_fractions: tuple[Fraction, ...] = (Fraction(0), Fraction(1, 3), Fraction(2, 3))
    always_frozen: tuple[str, ...] = ()
    freeze: str = "aiwq"

    def __post_init__(self) -> None:
        for name in ("fp_epochs", "warmup_epochs"):
            _need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an int >= 0", getattr(self, name))
        for name in ("bn_epochs", "ft_epochs", "sampling_epochs"):
            _need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an int >= 1", getattr(self, name))
        _need(self.warmup_epochs <= self.ft_epochs, "warmup_epochs", f"<= ft_epochs ({self.ft_epochs})",
              self.warmup_epochs)
        if self.fp_epochs:
            _need(self.warmup_epochs <= self.fp_epochs, "warmup_epochs", f"<= fp_epochs ({self.fp_epochs})",
                  self.warmup_epochs)
        object.__setattr__(self, "act_bits", _check_bits_list("act_bits", self.act_bits))
        object.__setattr__(self, "weight_bits", _check_bits_list("weight_bits", self.weight_bits))
        _need(isinstance(self.profit_bits, (list, tuple)), "profit_bits", "a list of bit widths", self.profit_bits)
        for i, b in enumerate(self.profit_bits):
            _need(b in self.weight_bits, f"profit_bits[{i}]", f"one of weight_bits {list(self.weight_bits)}", b, i)
        object.__setattr__(self, "profit_bits", tuple(self.profit_bits))
        _need(isinstance(self.bn_stabilize, bool), "bn_stabilize", "true or false", self.bn_stabilize)
        _need(isinstance(self.freeze_fractions, (list, tuple)) and len(self.freeze_fractions) > 0,
              "freeze_fractions", "a non-empty list of fractions in [0, 1]", self.freeze_fractions)
        fracs = tuple(_fraction("freeze_fractions", f, i) for i, f in enumerate(self.freeze_fractions))
        for i in range(1, len(fracs)):
            if fracs[i] < fracs[i - 1]:
                raise _FieldError("freeze_fractions", "freeze_fractions must not go down (PROFIT freezes more and "
                                                      f"more layers), got {[str(f) for f in fracs]}", i)
        object.__setattr__(self, "freeze_fractions", fracs)
        _need(isinstance(self.always_frozen, (list, tuple)), "always_frozen", "a list of module names",
              self.always_frozen)
        for i, n in enumerate(self.always_frozen):
            _need(isinstance(n, str) and n != "", f"always_frozen[{i}]", "a module name", n, i)
        object.__setattr__(self, "always_frozen", tuple(self.always_frozen))
        _need(self.freeze in FREEZE_POLICIES, "freeze", f"one of {FREEZE_POLICIES}", self.freeze)


@dataclass(frozen=True)
class AIWQSpec:
    """How AIWQ is measured in the sampling phases (see :class:`~profit_edu.aiwq.AIWQTracker`)."""

    ema: float = 0.999
    skip_above: float = 1.0
    include_linear: bool = False
    every: int = 1

    def __post_init__(self) -> None:
        _need(_is_real(self.ema) and 0 <= self.ema < 1, "ema", "a number in [0, 1)", self.ema)
        _need(isinstance(self.skip_above, (int, float)) and not isinstance(self.skip_above, bool)
              and self.skip_above > 0, "skip_above", "a number > 0 (.inf keeps all values)", self.skip_above)
        _need(isinstance(self.include_linear, bool), "include_linear", "true or false", self.include_linear)
        _need(_is_int(self.every) and self.every >= 1, "every", "an int >= 1", self.every)


@dataclass(frozen=True)
class ReproduceSpec:
    """How ``profit-edu reproduce`` runs an ImageNet recipe on several processes, and what it should reach.

    ``data.batch_size`` is the *global* batch, split evenly over the processes. ``lr_scaling`` says what another
    global batch (``--batch-size``) does to the learning rates: ``linear`` scales ``lr`` and ``fp_lr`` by
    new batch / ``data.batch_size`` (Goyal et al. 2017), ``none`` keeps them. ``amp`` (bfloat16 autocast of the
    training forwards), ``channels_last`` and ``sync_bn`` (BatchNorm over the global batch) are defaults the
    command line can override. ``expected_top1`` is the paper's number where one is known, with its source in
    ``expected_source`` (null and a note saying what is known where none is).
    """

    lr_scaling: str = "linear"
    amp: bool = False
    channels_last: bool = False
    sync_bn: bool = True
    expected_top1: float | None = None
    expected_source: str = ""

    def __post_init__(self) -> None:
        _need(self.lr_scaling in ("linear", "none"), "lr_scaling", "'linear' or 'none'", self.lr_scaling)
        for name in ("amp", "channels_last", "sync_bn"):
            _need(isinstance(getattr(self, name), bool), name, "true or false", getattr(self, name))
        _need(self.expected_top1 is None or (_is_real(self.expected_top1) and 0 < self.expected_top1 <= 100),
              "expected_top1", "a top-1 in (0, 100] or null (not known)", self.expected_top1)
        _need(isinstance(self.expected_source, str), "expected_source", "a string", self.expected_source)
        if self.expected_top1 is not None and not self.expected_source:
            raise _FieldError("expected_source", "expected_source must say where expected_top1 comes from")


@dataclass(frozen=True)
class RecipeSource:
    """Where a recipe came from: the file name and the line of every key (for error messages)."""

    path: str
    lines: Mapping[tuple, int]

    def where(self, *keys: str | int) -> str:
        """``file:line`` of the deepest of ``keys`` that has a line (the file alone if none has)."""
        for n in range(len(keys), 0, -1):
            if tuple(keys[:n]) in self.lines:
                return f"{self.path}:{self.lines[tuple(keys[:n])]}"
        return self.path


@dataclass(frozen=True)
class Recipe:
    """A whole PROFIT run: model, data, optimizer, schedule, AIWQ settings, mode and quirks.

    Load one with :func:`load_recipe` (a file or a shipped recipe's name) or :func:`parse_recipe` (YAML text).
    ``method`` is the quantizer: ``duq`` (PROFIT's, the default), ``pact`` or ``lsq``.

    >>> r = load_recipe("mobilenet_v2_w4a4_imagenet")
    >>> r.schedule.act_bits, r.schedule.weight_bits, r.teacher
    ((8, 5, 4), (8, 5, 4), 'resnet101')
    """

    name: str
    model: ModelSpec
    data: DataSpec
    train: OptimSpec
    schedule: ScheduleSpec
    aiwq: AIWQSpec = AIWQSpec()
    version: int = RECIPE_VERSION
    description: str = ""
    inferred: bool = False
    mode: str = "fixed"
    quirks: tuple[str, ...] = ()
    teacher: str = "none"
    seed: int = 0
    method: str = "duq"
    init: str | None = None
    reproduce: ReproduceSpec | None = None
    source: RecipeSource | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _need(self.version == RECIPE_VERSION, "version", f"{RECIPE_VERSION} (this profit-edu reads version "
                                                         f"{RECIPE_VERSION} recipes)", self.version)
        _need(isinstance(self.name, str) and self.name != "", "name", "a non-empty string", self.name)
        _need(isinstance(self.description, str), "description", "a string", self.description)
        _need(isinstance(self.inferred, bool), "inferred", "true or false", self.inferred)
        _need(self.mode in RECIPE_MODES, "mode", f"one of {RECIPE_MODES}", self.mode)
        _need(isinstance(self.quirks, (list, tuple)), "quirks", "a list of quirk names", self.quirks)
        for i, q in enumerate(self.quirks):
            _need(q in QUIRKS, f"quirks[{i}]", f"a known quirk, one of {sorted(QUIRKS)}", q, i)
        if self.quirks and self.mode != "reference":
            raise _FieldError("quirks", f"quirks {list(self.quirks)} replay the official code: they need "
                                        "mode: reference")
        object.__setattr__(self, "quirks", tuple(self.quirks))
        _need(isinstance(self.teacher, str) and self.teacher != "", "teacher",
              "'none', 'self', or a torchvision classifier name such as 'resnet101'", self.teacher)
        _need(_is_int(self.seed) and self.seed >= 0, "seed", "an int >= 0", self.seed)
        _need(self.method in METHODS, "method", f"one of {METHODS}", self.method)
        _need(self.init is None or (isinstance(self.init, str) and self.init != ""), "init",
              "null, a shipped pretrained name (profit_edu.pretrained.PRETRAINED) or a run directory", self.init)
        if self.mode == "reference" and self.method != "duq":
            raise _FieldError("method", f"mode: reference replays the official DuQ code; method {self.method!r} "
                                        "needs mode: fixed")

    def has(self, quirk: str) -> bool:
        """Whether the recipe replays the official code's ``quirk`` (see :data:`QUIRKS`)."""
        if quirk not in QUIRKS:
            raise KeyError(f"unknown quirk {quirk!r}; known: {sorted(QUIRKS)}")
        return quirk in self.quirks

    def where(self, *keys: str | int) -> str:
        """``file:line`` of a key, e.g. ``recipe.where("schedule", "act_bits")``."""
        return self.source.where(*keys) if self.source is not None else "<recipe>"

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (fractions as "p/q" strings), as it would be written in YAML."""
        d = dataclasses.asdict(self)
        d.pop("source")
        if d["reproduce"] is None:  # optional: recipes without it keep the dict (and recipe.json) they had
            d.pop("reproduce")
        d["schedule"]["freeze_fractions"] = [str(f) for f in self.schedule.freeze_fractions]
        for section, keys in (("schedule", ("act_bits", "weight_bits", "profit_bits", "always_frozen")),
                              ("", ("quirks",))):
            target = d[section] if section else d
            for k in keys:
                target[k] = list(target[k])
        return d


# --------------------------------------------------------------------------------------------
# Loading YAML, with line numbers
# --------------------------------------------------------------------------------------------
SECTIONS: dict[str, type] = {"model": ModelSpec, "data": DataSpec, "train": OptimSpec, "schedule": ScheduleSpec,
                             "aiwq": AIWQSpec, "reproduce": ReproduceSpec}


MAX_RECIPE_BYTES = 2**20  # shipped recipes are 1-3 kB
MAX_RECIPE_VALUES = 10_000  # keys, items and values after expanding aliases; shipped recipes have about 100
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")}


def _yaml_error(err: yaml.YAMLError, path: str) -> RecipeError:
    """A PyYAML error (several lines, with a code excerpt) as one line: ``file:line:column: the problem``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return RecipeError(f"{path}: not valid YAML: {' '.join(str(err).split())}")
    context = getattr(err, "context", None)
    return RecipeError(f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
                       + (f" ({context})" if context else ""))


def _check_nodes(root: yaml.Node, path: str) -> None:
    """Refuse what a recipe never needs before anything is expanded: tags other than plain values (no
    ``!!python/...``), aliases that refer to themselves, and aliases that expand past :data:`MAX_RECIPE_VALUES`.

    Each node's expanded size is computed once (aliases share nodes), so a file of nested aliases that would
    expand to billions of values is refused after visiting the few nodes it has.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        line = f"{path}:{node.start_mark.line + 1}"
        if id(node) in open_nodes:
            raise RecipeError(f"{line}: a YAML alias refers to the value that contains it (a recursive alias)")
        if node.tag.startswith("tag:yaml.org,2002:python/"):
            raise RecipeError(f"{line}: the tag !!{node.tag.split(':', 2)[-1]} would build a Python object; a recipe "
                              "holds plain values only (numbers, strings, lists, mappings)")
        if node.tag not in _PLAIN_TAGS:
            raise RecipeError(f"{line}: tag {node.tag!r} is not allowed in a recipe; a recipe holds plain values only "
                              "(numbers, strings, true/false, null, lists, mappings)")
        open_nodes.add(id(node))
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_RECIPE_VALUES:
                raise RecipeError(f"{line}: the recipe expands to more than {MAX_RECIPE_VALUES:,} values (each YAML "
                                  "alias *name repeats its anchor's whole value); write the values out instead")
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def _line_map(text: str, path: str) -> dict[tuple, int]:
    """The 1-based line of every key and list item, by key path; rejects duplicate keys, tags other than plain
    values, and aliases that expand past :data:`MAX_RECIPE_VALUES` (checked before anything is expanded)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(err, path) from err
    except RecursionError as err:
        raise RecipeError(f"{path}: not valid YAML for a recipe: nested too deeply") from err
    if root is not None:
        _check_nodes(root, path)
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, keys: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise RecipeError(f"{path}:{key_node.start_mark.line + 1}: key {key!r} appears twice")
                seen.add(key)
                lines[(*keys, key)] = key_node.start_mark.line + 1
                walk(value_node, (*keys, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*keys, i)] = item.start_mark.line + 1
                walk(item, (*keys, i))

    if root is not None:
        walk(root, ())
    return lines


def _build(cls: type, data: object, keys: tuple, source: RecipeSource) -> Any:
    """Build the dataclass ``cls`` from a YAML mapping, with unknown keys and bad values reported by line."""
    where = source.where(*keys) if keys else source.path
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: {'.'.join(keys) or 'the recipe'} must be a mapping of keys, got "
                          f"{type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    for key in data:
        if key not in known:
            raise RecipeError(f"{source.where(*keys, key)}: unknown key {key!r} in {'.'.join(keys) or 'the recipe'}"
                              f"; known keys: {', '.join(known)}")
    values = dict(data)
    for section, spec in SECTIONS.items():
        if not keys and section in values:
            values[section] = _build(spec, values[section], (section,), source)
    try:
        return cls(**values, source=source) if cls is Recipe else cls(**values)
    except _FieldError as err:
        base = err.name.split("[")[0]
        at = source.where(*keys, base, err.index) if err.index is not None else source.where(*keys, base)
        raise RecipeError(f"{at}: {'.'.join((*keys, '')) if keys else ''}{err}") from None
    except TypeError as err:  # a missing required section, e.g. no model:
        raise RecipeError(f"{where}: {err}") from None


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Parse YAML text into a :class:`Recipe`.

    In ``mode: reference`` without a ``quirks:`` key, every known quirk is on.

    Raises:
        RecipeError: invalid YAML, duplicate or unknown keys, or a value outside its range, with ``file:line``.
    """
    lines = _line_map(text, source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:  # _line_map already refused what compose sees; this is a constructor's problem
        raise _yaml_error(err, source) from err
    src = RecipeSource(source, lines)
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping with version, name, model, data, train, schedule")
    for section in ("version", "name", "model", "data", "train", "schedule"):
        if section not in data:
            raise RecipeError(f"{source}: the recipe lacks the required key {section!r}")
    if data.get("mode") == "reference" and "quirks" not in data:
        data = {**data, "quirks": sorted(QUIRKS)}
    return _build(Recipe, data, (), src)


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe (with or without ``.yaml``).

    Raises:
        FileNotFoundError: neither, with the list of shipped recipes.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPE_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if shipped.is_file() and path.parent == Path("."):
        return shipped
    raise FileNotFoundError(f"no recipe {str(name_or_path)!r}: not a file, and not one of the shipped recipes "
                            f"{list_recipes()}")


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``profit_edu/recipes/``."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """Load a recipe file, or a shipped recipe by name (e.g. ``"tiny"``, ``"mobilenet_v2_w4a4_imagenet"``).

    Raises:
        FileNotFoundError: no such file or shipped recipe.
        RecipeError: the recipe is invalid, not UTF-8, or larger than a recipe can be (the message names the file
            and line).
    """
    path = recipe_path(name_or_path)
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {size:,} bytes is not a recipe (they are a few kB; the limit is "
                          f"{MAX_RECIPE_BYTES:,})")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save "
                          "the recipe as UTF-8") from None
    return parse_recipe(text, str(path))
