"""profit_edu: an interactive textbook and a small PyTorch library that reproduce PROFIT.

PROFIT (Park & Yoo, ECCV 2020) trains 4-bit and 3-bit MobileNets with DuQ quantizers, negative padding
for h-swish, the AIWQ instability metric and progressive freezing. Modules, in the book's order:

* :mod:`profit_edu.quant`  - rounding with a straight-through estimator, DuQ, PACT, LSQ
* :mod:`profit_edu.layers` - QConv2d (negative padding), QLinear, QAct, quantize_model, set_bits
* :mod:`profit_edu.models` - MobileNet v1/v2/v3 with PROFIT's quantization points
* :mod:`profit_edu.aiwq`   - the AIWQ metric, its hook-based tracker, weight-flip and BN-statistics diagnostics
* :mod:`profit_edu.profit` - PROFIT's schedule as YAML recipes, AIWQ-ranked freezing, run_recipe
* :mod:`profit_edu.train`  - training and evaluation loops, KD, weight EMA, schedules
* :mod:`profit_edu.checkpoint` - safetensors + JSON checkpoints that resume exactly
* :mod:`profit_edu.data`   - CIFAR-10 (offline copy or checksummed download), ImageNet folders, synthetic data
* :mod:`profit_edu.pretrained` - the shipped pretrained float checkpoints quantization starts from
* :mod:`profit_edu.packed` - bit packing, BN folding, the bit-exact integer engine, packed files, ONNX export
* :mod:`profit_edu.cli`    - the ``profit-edu`` command (not imported here: ``python -m profit_edu.cli``)
* :mod:`profit_edu.book`   - the chapters' figures, widgets, exercise checks and runtime; it sits on top of the
  library and is not imported here (``from profit_edu.book import plots``)

ARCHITECTURE.md (in the repository) draws the import direction and says where to change what.
"""

from importlib.metadata import PackageNotFoundError, version

from . import aiwq, checkpoint, data, layers, models, packed, pretrained, profit, quant, train
from .layers import calibrate, quantize_model, set_bits
from .train import ModelEMA, TrainConfig, evaluate, fit

try:
    __version__ = version("profit-edu")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ModelEMA",
    "TrainConfig",
    "__version__",
    "aiwq",
    "calibrate",
    "checkpoint",
    "data",
    "evaluate",
    "fit",
    "layers",
    "models",
    "packed",
    "pretrained",
    "profit",
    "quant",
    "quantize_model",
    "set_bits",
    "train",
]
