"""MobileNet v1, v2 and v3 as plain float models with named quantization points (the book's models chapter).

* :func:`mobilenet_v1` - Howard et al. 2017 (no torchvision counterpart);
* :func:`mobilenet_v2`, :func:`mobilenet_v3_large`, :func:`mobilenet_v3_small` - architecture-identical to
  torchvision's (same state-dict keys, shapes and BatchNorm settings), so :func:`load_torchvision_weights`
  loads torchvision checkpoints strictly;
* :func:`count_macs`, :func:`count_params` - the cost numbers quoted in the builders' docstrings;
* :func:`get_model`, :func:`list_models` - the one table of builders, by name (:mod:`.registry`).

Each model marks where PROFIT quantizes activations: its ReLU / ReLU6 / Hardswish modules and
:class:`~profit_edu.layers.QuantPoint` identities (signed block inputs, pooled vectors).
:func:`~profit_edu.layers.quantize_model` turns them into quantizers; activations applied as functions
(the last conv's, SE's hard-sigmoid) stay float.

>>> import profit_edu as pe
>>> qnet = pe.quantize_model(mobilenet_v2(num_classes=10, width_mult=0.5, cifar_stem=True), 4, 4)
"""

from ._common import count_macs, count_params, load_torchvision_weights
from .mobilenet_v1 import MobileNetV1, mobilenet_v1
from .mobilenet_v2 import MobileNetV2, mobilenet_v2
from .mobilenet_v3 import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small
from .registry import get_model, list_models

__all__ = [
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3",
    "count_macs",
    "count_params",
    "get_model",
    "list_models",
    "load_torchvision_weights",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
]
