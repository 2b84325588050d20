"""Packed low-bit inference: bit packing, BatchNorm folding, an integer-only engine, a file format, ONNX export.

A quantization-aware-trained MobileNet (``quantize_model(...)`` after training) becomes an integer
:class:`Program` (:func:`to_program`): weight codes, int32 biases and fixed-point multipliers per channel, and
integer scales for the residual adds, pooling and SE gates that PROFIT keeps in float. Then:

* :class:`IntegerEngine` runs it with integer arithmetic (int32 accumulators, fixed-point requantization,
  an h-swish table), in pure PyTorch;
* :class:`DeployableModel` is the same network with real numbers (fake quantization, BatchNorm folded);
  the engine matches it bit for bit, and :func:`top1_agreement` compares it with the QAT model;
* :func:`save_packed` / :func:`load_packed` store it bit-packed (:func:`pack`) in a checksummed safetensors file;
* :func:`export_onnx` writes it as a QDQ ONNX model for onnxruntime.

Modules, in reading order: :mod:`.bitpack`, :mod:`.fixedpoint`, :mod:`.fold`, :mod:`.program`,
:mod:`.convert`, :mod:`.engine`, :mod:`.deploy`, :mod:`.fileformat`, :mod:`.onnx_export`. The commands
``profit-edu pack`` and ``run-packed`` live in :mod:`profit_edu.cli.packed`.

>>> import torch
>>> buf = pack(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]), 3)
>>> buf.numel(), unpack(buf, 3, 8).tolist()
(3, [0, 1, 2, 3, 4, 5, 6, 7])
"""

from .bitpack import PACK_BITS, pack, packed_size, unpack
from .convert import ConvertOptions, to_program
from .deploy import DeployableModel, top1_agreement
from .engine import IntegerEngine, quantize_image
from .fileformat import PackedFormatError, load_packed, read_packed, save_packed
from .fixedpoint import quantize_multiplier, requantize
from .fold import fold_bn
from .onnx_export import compare_with_engine, export_onnx, onnx_session, run_onnx
from .program import (
    AccumulatorOverflowError,
    Program,
    UnsupportedBitsError,
    UnsupportedModelError,
    check_program,
)

__all__ = [
    "PACK_BITS",
    "AccumulatorOverflowError",
    "ConvertOptions",
    "DeployableModel",
    "IntegerEngine",
    "PackedFormatError",
    "Program",
    "UnsupportedBitsError",
    "UnsupportedModelError",
    "check_program",
    "compare_with_engine",
    "export_onnx",
    "fold_bn",
    "load_packed",
    "onnx_session",
    "pack",
    "packed_size",
    "quantize_image",
    "quantize_multiplier",
    "read_packed",
    "requantize",
    "run_onnx",
    "save_packed",
    "to_program",
    "top1_agreement",
    "unpack",
]
