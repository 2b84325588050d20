"""Bit packing of 2/3/4/8-bit codes (profit_edu.packed.bitpack): layout, exact sizes, errors."""

import math

import pytest
import torch

from profit_edu.packed import PACK_BITS, pack, packed_size, unpack


def reference_pack(codes: list[int], bits: int) -> bytes:
    """Plain-Python oracle: code i occupies stream bits b*i .. b*i+b-1, least significant first."""
    stream = 0
    for i, c in enumerate(codes):
        stream |= c << (bits * i)
    return stream.to_bytes(math.ceil(len(codes) * bits / 8), "little")


@pytest.mark.parametrize("bits", PACK_BITS)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 100, 1001])
def test_exact_size_and_oracle(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(n))
    buf = pack(codes, bits)
    assert buf.dtype == torch.uint8 and buf.shape == (math.ceil(n * bits / 8),) == (packed_size(n, bits),)
    assert bytes(buf.tolist()) == reference_pack(codes.tolist(), bits)
    assert torch.equal(unpack(buf, bits, n), codes)


def test_layouts_spelled_out():
    assert pack(torch.tensor([1, 2]), 4).tolist() == [0x21]  # first code in the low nibble
    assert pack(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert pack(torch.tensor([7] * 8), 3).tolist() == [255, 255, 255]  # eight 3-bit codes in three bytes
    assert pack(torch.tensor([5]), 3).tolist() == [5]
    assert pack(torch.tensor([0, 0, 1]), 3).tolist() == [64, 0]  # bit 6 of the stream; ceil(9 / 8) = 2 bytes


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_any_integer_dtype_and_shape(dtype):
    codes = torch.randint(0, 8, (3, 5, 7)).to(dtype)
    buf = pack(codes, 3)
    assert torch.equal(unpack(buf, 3, codes.numel()).view(3, 5, 7), codes.long())


def test_signed_codes_are_stored_offset():
    signed = torch.arange(-7, 8)  # a 4-bit DuQ grid
    assert torch.equal(unpack(pack(signed + 7, 4), 4, 15) - 7, signed)


def test_extra_bytes_are_ignored():
    buf = torch.cat([pack(torch.tensor([3, 1, 2]), 2), torch.tensor([255], dtype=torch.uint8)])
    assert unpack(buf, 2, 3).tolist() == [3, 1, 2]


def test_errors():
    with pytest.raises(ValueError, match=r"0\.\.15 for 4-bit packing, got values in -1\.\.3"):
        pack(torch.tensor([-1, 3]), 4)
    with pytest.raises(ValueError, match=r"got values in 0\.\.8"):
        pack(torch.tensor([0, 8]), 3)
    with pytest.raises(TypeError, match="integer tensor"):
        pack(torch.tensor([0.0, 1.0]), 4)
    with pytest.raises(TypeError, match="integer tensor"):
        pack(torch.tensor([True]), 2)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        pack([1, 2], 4)
    for bad in (1, 5, 6, 7, 9, 0, -4):
        with pytest.raises(ValueError, match=r"one of \(2, 3, 4, 8\)"):
            pack(torch.tensor([0]), bad)
    for bad in ("4", 4.0, True, None):
        with pytest.raises(TypeError, match="bits must be an int"):
            pack(torch.tensor([0]), bad)
    buf = pack(torch.arange(10) % 8, 3)
    with pytest.raises(ValueError, match="buffer too short: 11 codes of 3 bits need 5 bytes, got 4"):
        unpack(buf, 3, 11)
    with pytest.raises(TypeError, match="uint8"):
        unpack(buf.to(torch.int8), 3, 4)
    with pytest.raises(ValueError, match="1-D"):
        unpack(buf.view(2, 2), 3, 4)
    with pytest.raises(ValueError, match=">= 0"):
        unpack(buf, 3, -1)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        packed_size(-1, 4)
