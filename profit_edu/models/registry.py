"""The one table of model builders: :func:`get_model` builds a model by name, :func:`list_models` lists the names.

Every place that turns a name into a network reads this table: ``profit-edu train``/``evaluate``/``pack``, the
recipes (``model.arch``), the shipped pretrained checkpoints. A new MobileNet is one builder function in its own
module and one line here.

>>> list_models()
['mobilenet_v1', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small']
>>> get_model("mobilenet_v2", num_classes=10, width_mult=0.25, cifar_stem=True).classifier[-1].out_features
10
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .mobilenet_v1 import mobilenet_v1
from .mobilenet_v2 import mobilenet_v2
from .mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small

__all__ = ["get_model", "list_models"]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}


def list_models() -> list[str]:
    """The names :func:`get_model` accepts, in the book's order (v1, v2, v3-large, v3-small)."""
    return list(_BUILDERS)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the float model ``name`` with the builder's keyword arguments (``num_classes``, ``width_mult``, ...).

    Args:
        name: one of :func:`list_models`.
        **kwargs: passed to the builder, e.g. :func:`~profit_edu.models.mobilenet_v2`; it checks them.

    Raises:
        ValueError: an unknown ``name`` (the message lists the known ones), or a bad argument value.
        TypeError: an argument the builder does not take.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; one of {list_models()}")
    return _BUILDERS[name](**kwargs)
