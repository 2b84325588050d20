"""Bit packing: b-bit integer codes in exactly ceil(n * b / 8) bytes, for b in 2, 3, 4 and 8.

A 4-bit weight needs 4 bits, but PyTorch's smallest integer is a byte, and common deployment formats keep one
code per byte (torchao's default "intx" layout, ONNX QDQ), which doubles a 4-bit model. Packing puts the codes
of one tensor side by side in a bit stream:

* code ``i`` occupies bits ``b*i .. b*i + b - 1`` of the stream, least significant bit first;
* byte ``j`` of the buffer holds stream bits ``8*j .. 8*j + 7`` (little-endian, bit 0 = the byte's lowest bit);
* the last byte is filled with zero bits.

So 2-bit codes go four to a byte, 4-bit codes two to a byte (first code in the low nibble), 8-bit codes one to a
byte, and 3-bit codes eight to three bytes (a 24-bit group; torchao's C fallback uses the same grouping).

Codes are *unsigned*: 0 .. 2**b - 1. DuQ's signed weight codes -K..K (K = 2**(b-1) - 1) are stored offset by K
("offset binary": -K -> 0, 0 -> K, K -> 2K), as :mod:`profit_edu.packed.fileformat` does; that leaves the code
2**b - 1 unused, the same code DuQ's symmetric grid never uses.

Vectorised: each group of ``g = lcm(b, 8) / b`` codes becomes one integer of ``lcm(b, 8)`` bits (at most 24), which
is split into bytes with shifts and masks; no Python loop over codes.

>>> buf = pack(torch.tensor([1, 2, 3, 0, 15]), 4)
>>> buf.tolist(), unpack(buf, 4, 5).tolist()
([33, 3, 15], [1, 2, 3, 0, 15])
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["PACK_BITS", "pack", "packed_size", "unpack"]

#: The bit widths that can be packed (the engine stores weights at these widths).
PACK_BITS: tuple[int, ...] = (2, 3, 4, 8)


def _check_pack_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an int, one of {PACK_BITS}, got {bits!r} of type {type(bits).__name__}")
    if int(bits) not in PACK_BITS:
        raise ValueError(f"bits must be one of {PACK_BITS} (the widths the packed format stores), got {bits}")
    return int(bits)


def _group(bits: int) -> tuple[int, int]:
    """(codes per group, bytes per group): the smallest run of codes that ends on a byte boundary."""
    total = bits * 8 // math.gcd(bits, 8)  # lcm(bits, 8)
    return total // bits, total // 8


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits take: ceil(n * bits / 8).

    >>> packed_size(10, 3), packed_size(10, 4), packed_size(0, 2)
    (4, 5, 0)
    """
    bits = _check_pack_bits(bits)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be an int >= 0 (a number of codes), got {n!r}")
    return (int(n) * bits + 7) // 8


def pack(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes in 0..2**bits-1 into a uint8 tensor of exactly ceil(n * bits / 8) bytes.

    Math: code i -> bits [b*i, b*i + b) of a little-endian bit stream (see the module docstring).

    Shapes: codes: any shape with n elements (flattened in row-major order) -> (ceil(n * bits / 8),) uint8.

    Args:
        codes: an integer tensor (uint8, int8, int16, int32 or int64) with values in 0..2**bits - 1.
            Signed codes must be offset to unsigned first (e.g. ``k + K``), see the module docstring.
        bits: 2, 3, 4 or 8.

    Returns:
        The packed bytes, on the CPU.

    Raises:
        TypeError: ``codes`` is not an integer tensor, or ``bits`` is not an int.
        ValueError: ``bits`` is not one of 2, 3, 4, 8, or a code lies outside 0..2**bits - 1.

    >>> pack(torch.tensor([1, 2, 3, 4, 5, 6, 7, 0]), 3).tolist()  # eight 3-bit codes in three bytes
    [209, 88, 31]
    """
    bits = _check_pack_bits(bits)
    if not isinstance(codes, Tensor):
        raise TypeError(f"codes must be a torch.Tensor of integers, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor (uint8, int8, int16, int32, int64), got dtype {codes.dtype}")
    flat = codes.detach().reshape(-1).to("cpu", torch.int64)
    n = flat.numel()
    if n:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= 2**bits:
            raise ValueError(f"codes must lie in 0..{2**bits - 1} for {bits}-bit packing, got values in {lo}..{hi}; "
                             f"offset signed codes to unsigned first (k + {2 ** (bits - 1) - 1} for DuQ's grid)")
    per_group, group_bytes = _group(bits)
    groups = -(-n // per_group)
    padded = torch.zeros(groups * per_group, dtype=torch.int64)
    padded[:n] = flat
    shifts = torch.arange(per_group, dtype=torch.int64) * bits
    word = (padded.view(groups, per_group) << shifts).sum(dim=1)  # (groups,): up to 24 bits each
    byte_shifts = torch.arange(group_bytes, dtype=torch.int64) * 8
    out = ((word[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: packed_size(n, bits)].clone()


def unpack(buf: Tensor, bits: int, n: int) -> Tensor:
    """The first ``n`` codes of a buffer made by :func:`pack`, as int64 values in 0..2**bits - 1.

    Shapes: buf: (m,) uint8 with m >= ceil(n * bits / 8) -> (n,) int64. Extra trailing bytes are ignored.

    Args:
        buf: the packed bytes (a 1-D uint8 tensor).
        bits: the width the codes were packed with: 2, 3, 4 or 8.
        n: how many codes to read.

    Raises:
        TypeError: ``buf`` is not a uint8 tensor, or ``bits``/``n`` are not ints.
        ValueError: ``bits`` is unsupported, ``n < 0``, ``buf`` is not 1-D, or it is too short for ``n`` codes.

    >>> unpack(torch.tensor([209, 88, 31], dtype=torch.uint8), 3, 8).tolist()
    [1, 2, 3, 4, 5, 6, 7, 0]
    """
    bits = _check_pack_bits(bits)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int (the number of codes to read), got {n!r}")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not isinstance(buf, Tensor) or buf.dtype != torch.uint8:
        raise TypeError(f"buf must be a uint8 tensor made by pack(), got "
                        f"{buf.dtype if isinstance(buf, Tensor) else type(buf).__name__}")
    if buf.dim() != 1:
        raise ValueError(f"buf must be 1-D, got shape {tuple(buf.shape)}")
    need = packed_size(n, bits)
    if buf.numel() < need:
        raise ValueError(f"buffer too short: {n} codes of {bits} bits need {need} bytes, got {buf.numel()}")
    per_group, group_bytes = _group(bits)
    groups = -(-n // per_group)
    padded = torch.zeros(groups * group_bytes, dtype=torch.int64)
    padded[:need] = buf[:need].to("cpu", torch.int64)
    byte_shifts = torch.arange(group_bytes, dtype=torch.int64) * 8
    word = (padded.view(groups, group_bytes) << byte_shifts).sum(dim=1)
    shifts = torch.arange(per_group, dtype=torch.int64) * bits
    codes = (word[:, None] >> shifts) & (2**bits - 1)
    return codes.reshape(-1)[:n].clone()
