"""The packed file format (profit_edu.packed.fileformat): round trip, exact size, and every kind of bad file."""

import base64
import json
import struct
import zlib

import pytest
import torch
from safetensors.torch import save as safetensors_save

from profit_edu.packed import (
    IntegerEngine,
    PackedFormatError,
    UnsupportedBitsError,
    load_packed,
    packed_size,
    quantize_image,
    read_packed,
    save_packed,
)
from profit_edu.packed.fileformat import (
    MAX_PROGRAM_BYTES,
    _decompress_program,
    _digest,
    _split,
    packed_bytes,
    program_to_json,
)

from .test_packed_engine import program_of, qat_model, random_images


@pytest.fixture(scope="module")
def blob() -> bytes:
    return packed_bytes(program_of("mobilenet_v3_small"))


def encode(text: str) -> str:
    return base64.b64encode(zlib.compress(text.encode())).decode()


def program_text(blob: bytes) -> str:
    return _decompress_program(_split(blob)[0]["__metadata__"]["program"])


def rewrite(blob: bytes, *, program=None, tensors=None, meta=None, fix_sha: bool = True) -> bytes:
    """A file with parts replaced (``program``: plain JSON text) and, by default, a correct checksum for them."""
    header, _ = _split(blob)
    old_meta = dict(header["__metadata__"])
    text = program if program is not None else program_text(blob)
    tensors = tensors if tensors is not None else program_tensors(blob)
    new_meta = old_meta | {"program": encode(text)} | (meta or {})
    raw = safetensors_save(tensors, metadata=new_meta)
    if fix_sha:
        _, data = _split(raw)
        raw = safetensors_save(tensors, metadata=new_meta | {"sha256": _digest(text, data)})
    return raw


def program_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(blob)


def test_round_trip_gives_the_same_engine(tmp_path, blob):
    program = program_of("mobilenet_v3_small")
    path = tmp_path / "m.pqm"
    assert save_packed(program, path) == path.stat().st_size == len(blob)
    loaded = load_packed(path)
    codes = quantize_image(random_images(2), program)
    assert torch.equal(IntegerEngine(loaded)(codes), IntegerEngine(program)(codes))
    for a, b in zip(program.convs(), loaded.convs()):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        assert torch.equal(a.m0, b.m0) and torch.equal(a.shift, b.shift) and a.pre_step == b.pre_step
    assert loaded.tensors == program.tensors and loaded.arch == program.arch
    assert loaded.mean == program.mean and loaded.input_size == program.input_size


def test_weights_take_exactly_ceil_n_bits_over_8_bytes_per_layer(blob):
    program = program_of("mobilenet_v3_small")
    tensors = program_tensors(blob)
    assert tensors["weights"].numel() == sum(packed_size(op.weight.numel(), op.weight_bits)
                                             for op in program.convs())
    channels = sum(op.weight.shape[0] for op in program.convs())
    assert tensors["bias"].numel() == tensors["m0"].numel() == tensors["shift"].numel() == channels
    header_bytes = len(blob) - len(_split(blob)[1])
    assert len(blob) == header_bytes + tensors["weights"].numel() + 9 * channels


def test_lower_bit_files_are_smaller():
    import copy

    import profit_edu as pe
    from profit_edu.packed import to_program

    sizes = {}
    for bits in (2, 3, 4, 8):
        net = pe.set_bits(copy.deepcopy(qat_model("mobilenet_v2")), weight_bits=bits)
        program = to_program(net)
        weights = sum(op.weight.numel() for op in program.convs())
        sizes[bits] = len(packed_bytes(program))
        assert packed_size(weights, bits) <= sizes[bits]
    assert sizes[2] < sizes[3] < sizes[4] < sizes[8]


@pytest.mark.parametrize("cut", [0, 7, 8, 100, -1, -1000])
def test_truncated_files(blob, cut):
    with pytest.raises(PackedFormatError, match=r"truncated|header|SHA-256"):
        read_packed(blob[:cut])


@pytest.mark.parametrize("where", ["header_length", "header", "data_start", "data_end"])
def test_flipped_bits(blob, where):
    data_at = len(blob) - len(_split(blob)[1])
    pos = {"header_length": 2, "header": 200, "data_start": data_at, "data_end": len(blob) - 1}[where]
    bad = bytearray(blob)
    bad[pos] ^= 0x10
    with pytest.raises(PackedFormatError):
        read_packed(bytes(bad))


def test_wrong_version_and_format(blob):
    with pytest.raises(PackedFormatError, match="format version '1'; this profit-edu reads version 2"):
        read_packed(rewrite(blob, meta={"version": "1"}))
    with pytest.raises(PackedFormatError, match="not a packed file"):
        read_packed(rewrite(blob, meta={"format": "something-else"}))
    with pytest.raises(PackedFormatError, match="__metadata__"):
        read_packed(safetensors_save({"x": torch.zeros(2)}))


def test_edited_program_without_checksum(blob):
    text = program_text(blob).replace('"padding":1', '"padding":2', 1)
    with pytest.raises(PackedFormatError, match="SHA-256 mismatch"):
        read_packed(rewrite(blob, program=text, fix_sha=False))


def test_program_metadata_that_is_not_compressed_json(blob):
    bomb = base64.b64encode(zlib.compress(b" " * (MAX_PROGRAM_BYTES + 1))).decode()  # 16 kB that inflate to 16 MB
    for bad, why in [("not base64!", "not base64"), (base64.b64encode(b"plain").decode(), "not base64 of zlib"),
                     (encode("{}")[:-8], "not base64|truncated"), (bomb, "larger than")]:
        with pytest.raises(PackedFormatError, match=why):
            read_packed(rewrite(blob, meta={"program": bad}))


def test_the_program_is_stored_compressed(blob):
    stored = _split(blob)[0]["__metadata__"]["program"]
    assert len(stored) * 3 < len(program_text(blob))


def test_mismatched_program_and_tensors_with_valid_checksum(blob):
    other = program_tensors(packed_bytes(program_of("mobilenet_v2")))
    with pytest.raises(PackedFormatError, match=r"do not match the program|needs more"):
        read_packed(rewrite(blob, tensors=other))
    tensors = program_tensors(blob)
    tensors["bias"] = tensors["bias"].to(torch.int64)
    with pytest.raises(PackedFormatError, match=r"'bias' must be 1-D torch\.int32"):
        read_packed(rewrite(blob, tensors=tensors))
    del tensors["bias"]
    with pytest.raises(PackedFormatError, match="expected tensors"):
        read_packed(rewrite(blob, tensors=tensors))


def test_program_field_errors(blob):
    doc = json.loads(program_text(blob))
    conv = next(i for i, op in enumerate(doc["ops"]) if op["op"] == "conv")

    def edited(change) -> bytes:
        d = json.loads(json.dumps(doc))
        change(d)
        return rewrite(blob, program=json.dumps(d))

    with pytest.raises(UnsupportedBitsError, match="weight bits 5"):
        read_packed(edited(lambda d: d["ops"][conv].update(bits=5)))
    with pytest.raises(PackedFormatError, match="unexpected keys \\['surprise'\\]"):
        read_packed(edited(lambda d: d["ops"][conv].update(surprise=1)))
    with pytest.raises(PackedFormatError, match="expected <class 'int'>"):
        read_packed(edited(lambda d: d["ops"][conv].update(stride="1")))
    with pytest.raises(PackedFormatError, match="unknown operation 'gelu'"):
        read_packed(edited(lambda d: d["ops"][conv].update(op="gelu")))
    with pytest.raises(ValueError, match="invalid"):
        read_packed(edited(lambda d: d["ops"][-1].update(input="nowhere")))
    with pytest.raises(ValueError, match="m0 must lie"):
        read_packed(edited(lambda d: d["ops"][conv + 1].update(m0=5) if "m0" in d["ops"][conv + 1] else
                           next(op for op in d["ops"] if op["op"] == "rescale").update(m0=5)))
    with pytest.raises(PackedFormatError, match="not valid JSON"):
        read_packed(rewrite(blob, program="{not json"))


def test_header_length_beyond_the_file(blob):
    bad = struct.pack("<Q", len(blob)) + blob[8:]
    with pytest.raises(PackedFormatError, match="does not fit"):
        read_packed(bad)


def test_missing_file(tmp_path):
    with pytest.raises(PackedFormatError, match="no such file"):
        load_packed(tmp_path / "missing.pqm")


def test_saving_checks_the_program():
    program = program_of("mobilenet_v3_small")
    text, tensors = program_to_json(program)
    assert json.loads(text)["arch"]["builder"] == "mobilenet_v3_small"
    assert set(tensors) == {"weights", "bias", "m0", "shift"}


# --------------------------------------------------------------------------------------------
# Issue 13: class names that fit the outputs, a string version, files that are not packed models
# --------------------------------------------------------------------------------------------
def test_class_names_must_fit_the_outputs_when_saving_and_loading(tmp_path, blob):
    import dataclasses

    program = program_of("mobilenet_v3_small")
    outputs = program.tensors[program.output].channels
    wrong = dataclasses.replace(program, classes=[f"c{i}" for i in range(outputs + 1)])
    with pytest.raises(ValueError, match=rf"classes has {outputs + 1} names, but the model has {outputs} outputs"):
        save_packed(wrong, tmp_path / "m.pqm")
    assert list(tmp_path.iterdir()) == []
    doc = json.loads(program_text(blob))
    for n in (0, 1, outputs - 1, outputs + 1):
        bad = rewrite(blob, program=json.dumps(doc | {"classes": [f"c{i}" for i in range(n)]}))
        with pytest.raises(ValueError, match=rf"classes has {n} names, but the model has {outputs} outputs"):
            read_packed(bad)
    right = read_packed(rewrite(blob, program=json.dumps(doc | {"classes": [f"c{i}" for i in range(outputs)]})))
    assert right.classes[-1] == f"c{outputs - 1}"


def test_an_integer_version_is_named_as_such(blob):
    from profit_edu.packed.fileformat import _serialize

    header, _ = _split(blob)  # the checksum covers the program and the tensors, not the version: it stays valid
    edited = _serialize(program_tensors(blob), header["__metadata__"] | {"version": 2})  # safetensors won't write it
    with pytest.raises(PackedFormatError, match=r"__metadata__\.version must be a string such as '2' "
                                                r"\(safetensors metadata holds strings only\), got the int 2") as info:
        read_packed(edited)
    assert "reads version 2 only" not in str(info.value)  # the message no longer contradicts itself


def test_paths_that_are_not_packed_files(tmp_path, monkeypatch, blob):
    import os

    with pytest.raises(PackedFormatError, match=r"not a regular file \(a directory, device or pipe\)"):
        load_packed(tmp_path)
    if os.path.exists("/dev/null"):
        with pytest.raises(PackedFormatError, match=r"/dev/null: not a regular file"):
            load_packed("/dev/null")
    from profit_edu.packed import fileformat

    (tmp_path / "m.pqm").write_bytes(blob)
    monkeypatch.setattr(fileformat, "MAX_FILE_BYTES", len(blob) - 1)
    with pytest.raises(PackedFormatError, match=rf"{len(blob):,} bytes, more than a packed model can have"):
        load_packed(tmp_path / "m.pqm")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("input_size", [5000, 5000], r"input_size must be an int, or two ints \(H, W\), in 1\.\.4096"),
    ("input_size", [0, 32], r"input_size must be"),
    ("mean", [0.5, 0.5, float("inf")], r"mean must be 3 finite numbers"),  # JSON's Infinity
])
def test_input_size_and_normalisation_are_bounded_in_files(blob, field, value, match):
    doc = json.loads(program_text(blob))
    with pytest.raises(ValueError, match=match):
        read_packed(rewrite(blob, program=json.dumps(doc | {field: value})))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"input_size": 0}, r"input_size must be an int, or two ints \(H, W\), in 1\.\.4096, got 0"),
    ({"input_size": -3}, r"got -3"),
    ({"input_size": 5000}, r"got 5000"),
    ({"input_size": True}, r"got True"),
    ({"mean": (0.5, 0.5)}, r"mean must be 3 finite numbers \(R, G, B\), got \(0\.5, 0\.5\)"),
    ({"std": (0.2, 0.0, 0.2)}, r"std must be 3 finite numbers \(R, G, B\), each > 0"),
    ({"classes": ["a"] * 11}, r"classes has 11 names, but the model has 10 outputs"),
])
def test_to_program_checks_its_arguments_first(kwargs, match):
    from profit_edu.packed import to_program

    with pytest.raises(ValueError, match=match):
        to_program(qat_model("mobilenet_v2"), **kwargs)
