"""profit_edu: an interactive textbook and a small PyTorch library that reproduce PROFIT.

PROFIT (Park & Yoo, ECCV 2020) trains 4-bit and 3-bit MobileNets with DuQ quantizers, negative padding
for h-swish, the AIWQ instability metric and progressive freezing. Modules, in the book's order:

* :mod:`profit_edu.grid`   - the uniform grids: bit widths, modes (signed, unsigned, h-swish), steps and codes
* :mod:`profit_edu.clip_init` - a quantizer's first clip, from data (least quantization error, or the official rules)
* :mod:`profit_edu.quant`  - rounding with a straight-through estimator, DuQ, PACT, LSQ
* :mod:`profit_edu.layers` - QConv2d (negative padding), QLinear, QAct, quantize_model, set_bits
* :mod:`profit_edu.models` - MobileNet v1/v2/v3 with PROFIT's quantization points
* :mod:`profit_edu.aiwq`   - the AIWQ metric and its hook-based tracker
* :mod:`profit_edu.diagnostics` - weight flips and BN drift, the instability AIWQ summarises, step by step
* :mod:`profit_edu.freezing` - AIWQ-ranked progressive freezing, and the random control
* :mod:`profit_edu.recipe`, :mod:`profit_edu.schedule` - PROFIT's schedule as YAML recipes; its phases and plan
* :mod:`profit_edu.optim`, :mod:`profit_edu.train`, :mod:`profit_edu.ema` - SGD groups and schedule; the
  training and evaluation loops, KD; the weight EMA
* :mod:`profit_edu.pipeline` - run_recipe: a recipe's phases, resumably (:mod:`profit_edu.profit` gathers
  freezing, recipe, schedule and pipeline under one name)
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

from . import (
    aiwq,
    checkpoint,
    clip_init,
    data,
    diagnostics,
    ema,
    freezing,
    grid,
    layers,
    models,
    optim,
    packed,
    pipeline,
    pretrained,
    profit,
    quant,
    recipe,
    schedule,
    train,
)
from .layers import calibrate, quantize_model, set_bits
from .train import ModelEMA, TrainConfig, evaluate, fit

try:
    __version__ = version("profit-edu")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.0.0+unknown"

__all__ = ["ModelEMA", "TrainConfig", "__version__", "aiwq", "calibrate", "checkpoint", "clip_init", "data",
           "diagnostics", "ema", "evaluate", "fit", "freezing", "grid", "layers", "models", "optim", "packed",
           "pipeline", "pretrained", "profit", "quant", "quantize_model", "recipe", "schedule", "set_bits", "train"]
