"""Progressive freezing: which layers' weights each PROFIT fine-tune freezes (chapter 6).

At the PROFIT bit width, a *sampling* phase trains normally while an :class:`~profit_edu.aiwq.AIWQTracker`
(:func:`make_tracker`) keeps each conv's AIWQ EMA ``M(l)`` and ranks the L convs, most unstable first. The
fine-tunes then freeze the top ``floor(L * f)`` of the ranking for f = 0, 1/3, 2/3 (:func:`freeze_count`):
for MobileNet-v2 (L = 52), 17, then 34 layers. Freezing a layer freezes its conv weight only (learning rate 0,
no weight decay): its BN and its quantizers' ``a`` and ``c`` keep training. Layers are named by their exact
module names (``features.3.conv.1.0``), never by substrings. BN-stabilisation phases freeze every weight.

*Freezing policy* (``schedule.freeze``, for ablations). ``aiwq`` (default) is PROFIT. ``random`` freezes the
same numbers of layers, drawn from a random order of the L layers (:func:`random_freeze_order`, seeded by the
recipe's ``seed``; ft3's layers include ft2's, as with the ranking): the control that shows whether *which*
layers are frozen matters. ``none`` freezes nothing but keeps every phase and epoch, so PROFIT and "no
freezing" train for exactly as long. Only ``aiwq`` measures AIWQ (the tracker only measures, so training is
the same with or without it).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import torch
from torch import nn

from .aiwq import AIWQTracker, tracked_layers

if TYPE_CHECKING:  # types only: freezing sits below the recipe and the schedule (ARCHITECTURE.md)
    from .recipe import Recipe
    from .schedule import Phase

__all__ = ["freeze_count", "frozen_for_phase", "make_tracker", "random_freeze_order", "weight_layers"]


def make_tracker(recipe: Recipe, model: nn.Module, *, distributed: str = "average") -> AIWQTracker:
    """The AIWQ tracker of the sampling phases, configured by the recipe (the ``aiwq_zero_pad`` quirk);
    ``distributed`` says how the processes of a distributed run combine it (see :class:`AIWQTracker`)."""
    a = recipe.aiwq
    return AIWQTracker(model, ema=a.ema, skip_above=a.skip_above, include_linear=a.include_linear, every=a.every,
                       aiwq_zero_pad=recipe.has("aiwq_zero_pad"), distributed=distributed)


def freeze_count(num_layers: int, fraction: Fraction) -> int:
    """floor(L * f), in exact arithmetic: 17 of 52 for 1/3, 34 of 52 for 2/3.

    >>> freeze_count(52, Fraction(1, 3)), freeze_count(52, Fraction(2, 3)), freeze_count(51, Fraction(1, 3))
    (17, 34, 17)
    """
    return math.floor(num_layers * Fraction(fraction))


def random_freeze_order(model: nn.Module, *, seed: int, include_linear: bool = False) -> list[str]:
    """The layers AIWQ would rank, in a random order: ``freeze: random`` freezes the first ``floor(L * f)``.

    The order is a permutation drawn by a ``torch.Generator`` seeded with ``seed`` (the recipe's seed), so
    reruns freeze the same layers and ft3's frozen layers include ft2's, as with the AIWQ ranking.

    Args:
        model: the quantized model (see :func:`~profit_edu.aiwq.tracked_layers`).
        seed: seeds the permutation.
        include_linear: rank linear layers too (``aiwq.include_linear``).

    >>> from profit_edu import quantize_model
    >>> net = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)), None, None)
    >>> sorted(random_freeze_order(net, seed=0)), random_freeze_order(net, seed=0) == random_freeze_order(net, seed=0)
    (['0', '1', '2'], True)
    """
    names = [n for n, _ in tracked_layers(model, include_linear=include_linear)]
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    return [names[i] for i in order]


def weight_layers(model: nn.Module) -> list[str]:
    """The names of ``model``'s conv and linear layers: the layers whose weights can be frozen."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def frozen_for_phase(recipe: Recipe, phase: Phase, model: nn.Module,
                     ranking: list[tuple[str, float]] | None) -> tuple[str, ...]:
    """Exact module names whose weights the phase freezes: all conv/linear layers for BN-stabilisation; for the
    fine-tunes at a PROFIT bit width, the first ``floor(L * f)`` layers of the AIWQ ranking (``freeze: aiwq``),
    of :func:`random_freeze_order` (``freeze: random``) or none (``freeze: none``); plus ``always_frozen``.

    Raises:
        ValueError: a fine-tune that freezes by AIWQ without a ranking.
    """
    names: list[str] = list(recipe.schedule.always_frozen)
    policy = recipe.schedule.freeze
    if phase.kind == "bn":
        names += weight_layers(model)
    elif phase.freeze_fraction is not None and phase.freeze_fraction > 0 and policy != "none":
        if policy == "random":
            order = random_freeze_order(model, seed=recipe.seed, include_linear=recipe.aiwq.include_linear)
        elif ranking is None:
            raise ValueError(f"phase {phase.name} freezes by AIWQ, but there is no ranking: run the sampling phase")
        else:
            order = [n for n, _ in ranking]
        names += order[: freeze_count(len(order), phase.freeze_fraction)]
    return tuple(dict.fromkeys(names))
