"""The PROFIT schedule: a recipe's phases in training order, and the plan printed before any training (chapter 7).

PROFIT (Park & Yoo, ECCV 2020) trains a 4-bit MobileNet in phases (notes E). Bits come down step by step,
activations first (8 -> 5 -> 4 with float weights), then weights (8 -> 5 -> 4). Around every bit change a short
*BN-stabilisation* phase trains everything except the conv/linear weights (BN gamma/beta, biases, the
quantizers' ``a`` and ``c``), so BN's running statistics settle on the new, fixed weights. At the PROFIT bit
width the method itself runs (see :mod:`profit_edu.freezing`):

1. *sampling*: train normally for a few epochs at a constant learning rate while AIWQ is measured; rank the
   L convs, most unstable first;
2. *ft1*: fine-tune everything;
3. *ft2*: freeze the weights of the top ``floor(L/3)`` layers of the ranking and fine-tune the rest;
4. *ft3*: freeze the top ``floor(2L/3)``;
5. *BN-stabilisation* once more.

:func:`expand_phases` turns a :class:`~profit_edu.recipe.Recipe` into this list of :class:`Phase` s;
:func:`format_plan` prints it (``profit-edu plan RECIPE``), :func:`plan_dict` gives it as data, and
:func:`check_recipe_for_model` checks the layers it always freezes against a model, before training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from torch import nn

from .aiwq import tracked_layers
from .freezing import freeze_count, weight_layers
from .layers import quantize_model
from .recipe import OptimSpec, Recipe, RecipeError

__all__ = ["PHASE_KINDS", "Phase", "check_recipe_for_model", "expand_phases", "format_plan", "plan_dict"]

PHASE_KINDS = ("fp", "bn", "ft", "sampling")


@dataclass(frozen=True)
class Phase:
    """One phase of the schedule: what trains, at which bits, for how long.

    Attributes:
        name: e.g. ``"fp"``, ``"a8_bn"``, ``"a8_ft"``, ``"w4_sampling"``, ``"w4_ft2"``, ``"w4_bn2"``.
        kind: ``"fp"`` (float fine-tune), ``"bn"`` (BN-stabilisation), ``"ft"`` (fine-tune), ``"sampling"``.
        epochs, warmup_epochs: its length and warm-up; the learning rate follows ``lr_schedule``.
        act_bits, weight_bits: the bit widths (None: float).
        lr_schedule: ``"cosine"`` (after the warm-up) or ``"constant"`` (the sampling phase).
        freeze_fraction: for the fine-tunes at a PROFIT bit width, the fraction of AIWQ-ranked layers frozen.
    """

    name: str
    kind: str
    epochs: int
    warmup_epochs: int
    act_bits: int | None
    weight_bits: int | None
    lr_schedule: str = "cosine"
    freeze_fraction: Fraction | None = None

    @property
    def trains_weights(self) -> bool:
        """False for BN-stabilisation: every conv/linear weight is frozen."""
        return self.kind != "bn"

    def to_dict(self) -> dict[str, Any]:
        """The phase as JSON-friendly data (the fraction as a "p/q" string)."""
        d = dataclasses.asdict(self)
        d["freeze_fraction"] = None if self.freeze_fraction is None else str(self.freeze_fraction)
        return d


def expand_phases(recipe: Recipe) -> list[Phase]:
    """The phase list of a recipe, in training order (notes E's table).

    >>> from profit_edu.recipe import load_recipe
    >>> [p.name for p in expand_phases(load_recipe("tiny"))]
    ['fp', 'a4_bn', 'a4_ft', 'a4_bn2', 'w4_bn', 'w4_sampling', 'w4_ft1', 'w4_ft2', 'w4_ft3', 'w4_bn2']
    >>> sum(p.epochs for p in expand_phases(load_recipe("mobilenet_v2_w4a4_imagenet")))  # the official command
    200
    """
    s = recipe.schedule
    phases: list[Phase] = []
    if s.fp_epochs:
        phases.append(Phase("fp", "fp", s.fp_epochs, s.warmup_epochs, None, None))

    def stage(prefix: str, a: int | None, w: int | None, profit: bool) -> None:
        if s.bn_stabilize:
            phases.append(Phase(f"{prefix}_bn", "bn", s.bn_epochs, 0, a, w))
        if profit:
            phases.append(Phase(f"{prefix}_sampling", "sampling", s.sampling_epochs, 0, a, w, "constant"))
            for k, frac in enumerate(s.freeze_fractions, start=1):
                phases.append(Phase(f"{prefix}_ft{k}", "ft", s.ft_epochs, s.warmup_epochs, a, w,
                                    freeze_fraction=frac))
        else:
            phases.append(Phase(f"{prefix}_ft", "ft", s.ft_epochs, s.warmup_epochs, a, w))
        if s.bn_stabilize:
            phases.append(Phase(f"{prefix}_bn2", "bn", s.bn_epochs, 0, a, w))

    for a in s.act_bits:
        stage(f"a{a}", a, None, False)
    for w in s.weight_bits:
        stage(f"w{w}", s.act_bits[-1], w, w in s.profit_bits)
    return phases


def plan_dict(recipe: Recipe, *, num_layers: int | None = None) -> dict[str, Any]:
    """The plan as JSON-friendly data: the recipe, L, each phase with its frozen-layer count, the total epochs."""
    L = _count_tracked(recipe) if num_layers is None else num_layers
    phases = []
    for p in expand_phases(recipe):
        d = p.to_dict()
        if p.freeze_fraction is not None:
            d["frozen_layers"] = freeze_count(L, p.freeze_fraction) if recipe.schedule.freeze != "none" else 0
        else:
            d["frozen_layers"] = "all" if p.kind == "bn" else 0
        phases.append(d)
    return {"recipe": recipe.to_dict(), "num_layers": L, "phases": phases,
            "total_epochs": sum(p["epochs"] for p in phases)}


def _count_tracked(recipe: Recipe) -> int:
    model = quantize_model(recipe.model.build(), None, None)
    return len(tracked_layers(model, include_linear=recipe.aiwq.include_linear))


_METHOD_NAMES = {"duq": "DuQ", "pact": "PACT", "lsq": "LSQ"}
_FREEZE_NAMES = {"random": "random layers, as many as PROFIT freezes (seeded by the recipe's seed)",
                 "none": "none, with the same phases and epochs"}


def _bits(b: int | None) -> str:
    return "fp" if b is None else str(b)


def _lr_text(p: Phase, o: OptimSpec) -> str:
    """A phase's learning rate as the plan shows it (a per-epoch cosine over one epoch is a constant rate)."""
    base = o.fp_lr if p.kind == "fp" and o.fp_lr is not None else o.lr
    if p.lr_schedule == "constant":
        return f"{base:g} constant"
    per_step = " per step" if o.lr_per_step else ""
    if p.warmup_epochs:
        return f"{base:g}, warm-up {p.warmup_epochs} + cosine{per_step}"
    if o.lr_per_step or p.epochs > 1:
        return f"{base:g}, cosine{per_step}"
    return f"{base:g} constant (cosine per epoch, 1 epoch)"  # one value per epoch: the full rate throughout


def format_plan(recipe: Recipe, *, num_layers: int | None = None) -> str:
    """The phase timeline as text (``profit-edu plan``): a dry run, nothing is trained.

    Args:
        recipe: the recipe.
        num_layers: L, the number of AIWQ-ranked layers (default: build the model and count them).

    >>> from profit_edu.recipe import load_recipe
    >>> print(format_plan(load_recipe("tiny")).splitlines()[-1])
    total: 10 phases, 11 epochs
    """
    L = _count_tracked(recipe) if num_layers is None else num_layers
    s, o = recipe.schedule, recipe.train
    m = recipe.model
    head = [
        f"PROFIT plan: {recipe.name} (recipe version {recipe.version}, mode {recipe.mode}"
        f"{', schedule partly inferred' if recipe.inferred else ''})",
        f"model {m.arch} (width {m.width_mult}, {m.num_classes} classes{', cifar stem' if m.cifar_stem else ''}"
        f"{', pretrained ' + m.pretrained if m.pretrained else ''}); teacher {recipe.teacher}; data "
        f"{recipe.data.dataset}, batch {recipe.data.batch_size}; quantizer {_METHOD_NAMES[recipe.method]}",
        f"optimizer SGD lr {o.lr:g} (a, c x{o.quant_lr_mult:g}), momentum {o.momentum:g}"
        f"{' nesterov' if o.nesterov else ''}, weight decay {o.weight_decay:g}; weight EMA "
        f"{'off' if o.ema_decay is None else f'{o.ema_decay:g}'}; KD weight {o.kd_weight:g}",
        f"AIWQ ranks L = {L} layers; EMA {recipe.aiwq.ema:g}, values above {recipe.aiwq.skip_above:g} skipped, "
        f"every {recipe.aiwq.every} step(s)",
    ]
    if s.freeze != "aiwq":
        head.append(f"freezing: {_FREEZE_NAMES[s.freeze]} (an ablation; PROFIT freezes by AIWQ)")
    if recipe.quirks:
        head.append(f"reference quirks: {', '.join(recipe.quirks)}")
    if s.always_frozen:
        head.append(f"always frozen: {', '.join(s.always_frozen)}")
    rows = [("#", "phase", "epochs", "A/W bits", "trains", "frozen", "learning rate")]
    for i, p in enumerate(expand_phases(recipe)):
        if p.kind == "bn":
            trains, frozen = "BN, biases, a, c (no conv/linear weights)", "all weights"
        elif p.kind == "sampling":
            trains, frozen = ("everything; AIWQ sampled" if s.freeze == "aiwq" else "everything"), "-"
        elif p.freeze_fraction is not None:
            k = freeze_count(L, p.freeze_fraction) if s.freeze != "none" else 0
            chosen = f"the top {k} AIWQ" if s.freeze == "aiwq" else f"{k} random"
            trains = "everything" if k == 0 else f"all but {chosen} layers' weights"
            frozen = f"{k} of {L} ({p.freeze_fraction}{'' if s.freeze == 'aiwq' else ', freeze ' + s.freeze})"
        else:
            trains, frozen = ("everything (float)" if p.kind == "fp" else "everything"), "-"
        rows.append((str(i), p.name, str(p.epochs), f"{_bits(p.act_bits)}/{_bits(p.weight_bits)}", trains, frozen,
                     _lr_text(p, o)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    table = ["  ".join(cell.rjust(w) if c in (0, 2) else cell.ljust(w) for c, (cell, w) in
                       enumerate(zip(r, widths))).rstrip() for r in rows]
    phases = expand_phases(recipe)
    total = f"total: {len(phases)} phases, {sum(p.epochs for p in phases)} epochs"
    return "\n".join([*head, "", *table, "", total])


def check_recipe_for_model(recipe: Recipe, model: nn.Module) -> None:
    """Reject names in ``schedule.always_frozen`` that are not conv/linear layers of ``model`` (before training).

    Raises:
        RecipeError: with the offending entry's line.
    """
    layers = set(weight_layers(model))
    for i, name in enumerate(recipe.schedule.always_frozen):
        if name not in layers:
            close = sorted(layers, key=lambda n: (not n.startswith(name.split(".")[0]), n))[:4]
            raise RecipeError(f"{recipe.where('schedule', 'always_frozen', i)}: {name!r} is not a conv or linear "
                              f"layer of {type(model).__name__} (exact module names, e.g. {close})")
