"""The weight EMA: an exponential moving average of the whole model, evaluated beside the raw model (chapter 7).

PROFIT keeps one EMA of the model state across all its phases (notes E) and reports the EMA's accuracy;
:func:`profit_edu.train.fit` updates it after every optimizer step and stores its update count in every
checkpoint, so a resumed run continues the average exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ._validate import is_real as _is_real
from .layers import QConv2d, quantizers

__all__ = ["ModelEMA"]


class ModelEMA:
    """An exponential moving average of a model's whole state, updated after every optimizer step.

    Math: ema <- ema + (1 - d_n) (live - ema) for every floating-point entry of the state dict (weights, biases,
    BN gamma/beta *and* running mean/var, quantizer ``a_hat``/``c_hat``); integer and bool entries
    (``num_batches_tracked``, the quantizers' ``initialized`` flag) are copied. With d = 0.9997 the average
    spans about 1 / (1 - d) = 3333 steps.

    Warm-up (``warmup=True``, the default): after n updates, d_n = min(d, (1 + n) / (10 + n)), as TensorFlow's
    and timm's EMAs do, so the average forgets its starting point within a few hundred steps however large d is.
    Without it (the official code, ``warmup=False``) d_n = d: a run of a few hundred steps at d = 0.9997 keeps
    ~90 % of the starting weights, and an EMA of a quick-scale run scored at chance. :meth:`reset` restarts the
    average from the live model (PROFIT's fixed mode does so when the bit widths change).

    A quantizer that initialises itself from its first batch *after* the EMA was made is copied as a whole into
    the EMA at that moment (the official code averaged from the uninitialised values instead, notes G.12).
    Bit widths and negative-padding values are copied from the live model at every update.

    Args:
        model: the live model; it is deep-copied (forward hooks, e.g. AIWQ trackers, are not).
        decay: d in [0, 1).
        warmup: grow the decay with the number of updates (see above).

    >>> live = nn.Linear(1, 1, bias=False); _ = live.weight.data.fill_(0.0)
    >>> ema = ModelEMA(live, decay=0.5, warmup=False); _ = live.weight.data.fill_(1.0); ema.update(live)
    >>> ema.module.weight.item()
    0.5
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997, *, warmup: bool = True) -> None:
        if not _is_real(decay) or not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be a number in [0, 1), got {decay!r}")
        if not isinstance(warmup, bool):
            raise TypeError(f"warmup must be True or False, got {warmup!r}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0  # n, the number of updates so far (checkpoints keep it: see fit)
        self.module = copy.deepcopy(model).eval()
        for m in self.module.modules():
            # hooks that the live model's tools (AIWQ trackers, debuggers) registered must not run on the copy
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
            m._backward_hooks.clear()
        self.module.requires_grad_(False)

    def _sync_settings(self, model: nn.Module) -> None:
        live_q = dict(quantizers(model))
        for name, q in quantizers(self.module):
            src = live_q.get(name)
            if src is None:
                raise ValueError(f"the live model has no quantizer {name!r}, which its EMA copy has: "
                                 "create the ModelEMA after quantize_model")
            q.bits = src.bits
            if src._ready and not q._ready:  # initialised from its first batch just now: copy it whole
                q.load_state_dict(src.state_dict())
        live_convs = {n: m for n, m in model.named_modules() if isinstance(m, QConv2d)}
        for name, m in self.module.named_modules():
            if isinstance(m, QConv2d) and name in live_convs:
                m.pad_value = live_convs[name].pad_value

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current state.

        Raises:
            ValueError: ``model``'s state dict has other keys than the EMA copy (quantized after the EMA was made?).
        """
        self._sync_settings(model)
        live, ema = model.state_dict(), self.module.state_dict()
        if live.keys() != ema.keys():
            diff = sorted(set(live) ^ set(ema))
            raise ValueError(f"the model and its EMA have different state keys ({diff[:5]} ...): create the "
                             "ModelEMA after quantize_model, from the model being trained")
        floats_ema, floats_live = [], []
        for key, e in ema.items():
            if e.is_floating_point():
                floats_ema.append(e)
                floats_live.append(live[key])
            else:
                e.copy_(live[key])
        if floats_ema:
            torch._foreach_lerp_(floats_ema, floats_live, 1.0 - self.current_decay())
        self.updates += 1

    def current_decay(self) -> float:
        """d_n, the decay the next update uses."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current state (n = 0)."""
        self._sync_settings(model)
        self.module.load_state_dict(model.state_dict(), strict=True)
        self.updates = 0

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()
