"""Properties of bit packing, fixed-point requantization and the packed-file loader (Hypothesis)."""

import functools
import math
from fractions import Fraction

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profit_edu.packed import PACK_BITS, pack, packed_size, read_packed, requantize, unpack
from profit_edu.packed.fileformat import packed_bytes

pack_bits = st.sampled_from(PACK_BITS)
shapes = st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=3)


@st.composite
def codes_and_bits(draw):
    bits = draw(pack_bits)
    shape = draw(shapes)
    n = math.prod(shape)
    values = draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.uint8, torch.int16, torch.int32, torch.int64]))
    return torch.tensor(values, dtype=torch.int64).reshape(shape).to(dtype), bits


@settings(max_examples=300, deadline=None)
@given(cb=codes_and_bits())
def test_pack_unpack_round_trip_with_exact_size(cb):
    codes, bits = cb
    buf = pack(codes, bits)
    assert buf.dtype == torch.uint8 and buf.numel() == packed_size(codes.numel(), bits)
    assert buf.numel() == math.ceil(codes.numel() * bits / 8)
    assert torch.equal(unpack(buf, bits, codes.numel()).reshape(codes.shape), codes.long())


@settings(max_examples=200, deadline=None)
@given(cb=codes_and_bits())
def test_pack_matches_a_plain_python_bit_stream(cb):
    codes, bits = cb
    stream = sum(int(c) << (bits * i) for i, c in enumerate(codes.reshape(-1).tolist()))
    want = stream.to_bytes(math.ceil(codes.numel() * bits / 8), "little")
    assert bytes(pack(codes, bits).tolist()) == want


@settings(max_examples=300, deadline=None)
@given(n=st.integers(-(2**31) + 1, 2**31 - 1), m0=st.integers(2**30, 2**31 - 1), shift=st.integers(1, 62))
def test_requantize_is_round_half_to_even_of_the_exact_product(n, m0, shift):
    v = Fraction(n * m0, 2**shift)
    floor = math.floor(v)
    frac = v - floor
    want = floor + (1 if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and floor % 2) else 0)
    assert int(requantize(torch.tensor([n]), m0, shift)[0]) == want


# ---------------------------------------------------------------- the loader under fuzzing
@functools.lru_cache(maxsize=1)
def _packed_file() -> bytes:
    from ..unit.test_packed_engine import program_of

    torch.set_num_threads(1)
    return packed_bytes(program_of("mobilenet_v3_small"))


def _loads_or_refuses(blob: bytes) -> None:
    """Loading damaged bytes must raise a ValueError, or give back exactly the original model."""
    try:
        program = read_packed(blob)
    except ValueError as err:
        assert str(err), "errors must say what is wrong"
        return
    assert packed_bytes(program) == _packed_file()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_truncated_files_are_refused(data):
    blob = _packed_file()
    cut = data.draw(st.integers(0, len(blob) - 1))
    _loads_or_refuses(blob[:cut])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bit_flips_are_refused(data):
    blob = bytearray(_packed_file())
    header_end = 8 + int.from_bytes(blob[:8], "little")
    flips = data.draw(st.integers(1, 3))
    for _ in range(flips):
        # half the flips aim at the header (JSON, tensor table, metadata), where parsing is most fragile
        region = data.draw(st.sampled_from(["header", "anywhere"]))
        hi = header_end if region == "header" else len(blob)
        pos = data.draw(st.integers(0, hi - 1))
        blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    _loads_or_refuses(bytes(blob))


def _with_classes(blob: bytes, classes: object) -> bytes:
    """The packed file with ``program.classes`` replaced, re-checksummed: a file that passes every byte check."""
    import base64
    import json
    import zlib

    from safetensors.torch import load

    from profit_edu.packed.fileformat import _decompress_program, _digest, _serialize, _split

    meta = _split(blob)[0]["__metadata__"]
    text = json.dumps(json.loads(_decompress_program(meta["program"])) | {"classes": classes})
    tensors = load(blob)
    meta = meta | {"program": base64.b64encode(zlib.compress(text.encode())).decode()}
    return _serialize(tensors, meta | {"sha256": _digest(text, _split(_serialize(tensors, meta))[1])})


@functools.lru_cache(maxsize=1)
def _outputs() -> int:
    program = read_packed(_packed_file())
    return program.tensors[program.output].channels


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(classes=st.one_of(st.none(), st.lists(st.text(max_size=4), max_size=25),
                         st.lists(st.one_of(st.text(max_size=4), st.integers(), st.none()), max_size=25)))
def test_class_names_that_do_not_fit_the_outputs_are_refused(classes):
    """Issue 13: a file whose class list is longer or shorter than the model's outputs (checksum valid) crashed
    run-packed with an IndexError; now it loads only when every output has exactly one name."""
    from profit_edu.packed import IntegerEngine

    blob, outputs = _packed_file(), _outputs()
    try:
        program = read_packed(_with_classes(blob, classes))
    except ValueError as err:
        assert classes is not None and (len(classes) != outputs or not all(isinstance(c, str) for c in classes))
        assert "classes" in str(err)
        return
    assert classes is None or (len(classes) == outputs and program.classes == classes)
    logits = IntegerEngine(program)(torch.zeros(1, 3, *program.input_size, dtype=torch.int64))
    assert logits.shape[1] == outputs  # every output index names a class: run-packed can rank them all


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_class_lists_of_exactly_the_right_length_load(data):
    blob, outputs = _packed_file(), _outputs()
    names = data.draw(st.lists(st.text(max_size=6), min_size=outputs, max_size=outputs))
    assert read_packed(_with_classes(blob, names)).classes == names
